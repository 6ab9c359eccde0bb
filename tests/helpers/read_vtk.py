#!/usr/bin/env python3
"""Reads mesh files with readers other than kneenode's and prints, per file, what kneenode's
tests compare: point and triangle counts, point arrays with their values, the first point.
Legacy VTK polydata goes through VTK's own vtkPolyDataReader; with --meshio, PLY and STL go
through meshio (whose legacy-VTK reader does not read POLYDATA at all). Used by
tests/it/mesh.rs; tests/helpers/mesh-readers.sh installs `vtk` and `meshio`.

usage: read_vtk.py [--meshio] FILE...   → one JSON object per line
       read_vtk.py --write-sphere OUT.vtk [--binary]
           writes, with VTK's vtkPolyDataWriter, a sphere with normals and the point arrays
           pymskt gives a bone (`thickness (mm)` double, `labels` int64), then prints it as above
"""
import json
import sys


def read_with_vtk(path):
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkPolyDataReader()
    reader.SetFileName(path)
    reader.ReadAllScalarsOn()
    reader.ReadAllFieldsOn()
    reader.Update()
    if reader.GetErrorCode() != 0:
        raise SystemExit(f"{path}: vtk could not read it (error code {reader.GetErrorCode()})")
    poly = reader.GetOutput()
    pd = poly.GetPointData()
    arrays = {}
    for i in range(pd.GetNumberOfArrays()):
        a = pd.GetArray(i)
        arrays[a.GetName()] = [float(x) for x in vtk_to_numpy(a).ravel()]
    polys = poly.GetPolys()
    sizes = set()
    ids = vtk.vtkIdList()
    polys.InitTraversal()
    while polys.GetNextCell(ids):
        sizes.add(ids.GetNumberOfIds())
    return {
        "reader": "vtk " + vtk.vtkVersion.GetVTKVersion(),
        "points": poly.GetNumberOfPoints(),
        "triangles": poly.GetNumberOfPolys(),
        "cell_sizes": sorted(sizes),
        "arrays": arrays,
        "bounds": list(poly.GetBounds()),
        "first_point": list(poly.GetPoint(0)) if poly.GetNumberOfPoints() else [],
    }


def read_with_meshio(path):
    import meshio

    m = meshio.read(path)
    tris = sum(len(c.data) for c in m.cells if c.type == "triangle")
    return {
        "reader": "meshio " + meshio.__version__,
        "points": int(m.points.shape[0]),
        "triangles": int(tris),
        "arrays": {k: [float(x) for x in v.ravel()] for k, v in m.point_data.items()},
        "first_point": [float(x) for x in m.points[0]] if len(m.points) else [],
    }


def write_sphere(path, binary):
    import numpy as np
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    src = vtk.vtkSphereSource()
    src.SetRadius(20.0)
    src.SetThetaResolution(24)
    src.SetPhiResolution(16)
    src.Update()
    poly = src.GetOutput()  # carries point normals, like pymskt's meshes after normals
    n = poly.GetNumberOfPoints()
    thickness = numpy_to_vtk(np.linspace(0.0, 3.0, n).astype(np.float64), deep=True)
    thickness.SetName("thickness (mm)")
    labels = numpy_to_vtk((np.arange(n) % 5 + 11).astype(np.int64), deep=True)
    labels.SetName("labels")
    poly.GetPointData().AddArray(thickness)
    poly.GetPointData().AddArray(labels)
    poly.GetPointData().SetActiveScalars("thickness (mm)")
    writer = vtk.vtkPolyDataWriter()
    writer.SetFileName(path)
    writer.SetInputData(poly)
    if binary:
        writer.SetFileTypeToBinary()
    else:
        writer.SetFileTypeToASCII()
    writer.Write()


def main():
    args = sys.argv[1:]
    if args and args[0] == "--write-sphere":
        write_sphere(args[1], "--binary" in args)
        args = [args[1]]
    use_meshio = "--meshio" in args
    for path in [a for a in args if a != "--meshio"]:
        out = read_with_meshio(path) if use_meshio else read_with_vtk(path)
        out["file"] = path
        print(json.dumps(out))


if __name__ == "__main__":
    main()
