//! The measurement report (Comprehensive 3D SR, TID 1500) of a phantom: written next to the
//! phantom's SEG, validated by dciodvfy (dicom3tools), and parsed by dcmtk's dsrdump and
//! dsr2xml, which must find the volumes, thicknesses and BScore in the tree.

use std::path::Path;
use std::process::Command;

use kneenode::dicom::codes::SegmentCatalog;
use kneenode::dicom::seg::{write_seg, SegRequest};
use kneenode::dicom::sr::{
    bscore_group, concepts, thickness_group, volume_group, write_sr, RegionThickness, SrRequest,
};
use kneenode::dicom::write::{ds, write_mr_series, SeriesInfo};
use kneenode::phantom::{generate, tissue_volumes_mm3, PhantomParams};
use kneenode::volume::read_dicom_dir;

fn job_time() -> chrono::NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(2026, 3, 4)
        .and_then(|d| d.and_hms_opt(5, 6, 7))
        .unwrap()
}

/// Runs a tool on `file`; returns (success, stdout + stderr).
fn tool(name: &str, args: &[&str], file: &Path) -> (bool, String) {
    let out = Command::new(name)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("{name} is installed: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_phantom_measurement_report_is_valid_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let phantom = generate(&PhantomParams::small(5));
    let files = write_mr_series(
        &phantom.image,
        &SeriesInfo::default(),
        &dir.path().join("mr"),
    )
    .unwrap();
    let image = read_dicom_dir(&dir.path().join("mr")).unwrap();
    let mut labels = phantom.labels.clone();
    labels.set_geometry(*image.geometry());
    let catalog = SegmentCatalog::builtin();
    let seg_path = dir.path().join("out/seg.dcm");
    let seg = write_seg(
        &SegRequest {
            labels: &labels,
            sources: &files,
            catalog: &catalog,
            job_id: "it-sr-job",
            algorithm_name: "kneenode demo",
            algorithm_version: "1",
            series_number: 901,
            created: job_time(),
        },
        &seg_path,
    )
    .unwrap();

    // One volume group per segment, a thickness group for the femoral cartilage, the BScore.
    let volumes = tissue_volumes_mm3(&labels);
    let mut groups: Vec<_> = seg
        .segments
        .iter()
        .map(|s| {
            let v = volumes[usize::from(s.label)];
            volume_group(&catalog.segments[&s.label], s.number, v)
        })
        .collect();
    assert_eq!(groups.len(), 9);
    let femoral = seg.segments.iter().find(|s| s.label == 2).unwrap();
    let regions: Vec<_> = ["ant_fem_cart", "med_wb_fem_cart", "lat_wb_fem_cart"]
        .iter()
        .zip([1.75, 2.25, 2.0625])
        .map(|(key, mean)| RegionThickness {
            region: concepts::thickness_region(key),
            mean,
            std: 0.5,
            median: mean - 0.125,
            max: Some(mean + 1.5),
        })
        .collect();
    groups.push(thickness_group(
        &catalog.segments[&2],
        femoral.number,
        &regions,
    ));
    groups.push(bscore_group(1.2345, None));

    let out = dir.path().join("out/sr.dcm");
    let req = SrRequest {
        seg: &seg_path,
        groups: &groups,
        job_id: "it-sr-job",
        algorithm_name: "kneenode demo",
        algorithm_version: "1",
        series_number: 902,
        created: job_time(),
    };
    let summary = write_sr(&req, &out).unwrap();
    let first = std::fs::read(&out).unwrap();
    write_sr(&req, &out).unwrap();
    assert_eq!(
        first,
        std::fs::read(&out).unwrap(),
        "a rewrite is identical"
    );

    // dicom3tools: no errors.
    crate::dicom_checks::dciodvfy(&out);

    // dcmtk parses the tree (checking the Comprehensive 3D SR relationship constraints) and
    // finds the values.
    let (ok, dump) = tool("dsrdump", &["+Pu", "+Pl", "+Pt"], &out);
    assert!(ok, "dsrdump failed:\n{dump}");
    for bad in ["Error", "Warning", "invalid", "violat"] {
        assert!(!dump.contains(bad), "dsrdump reports {bad}:\n{dump}");
    }
    for want in [
        "Imaging Measurement Report",
        "Measurement Group",
        "Referenced Segment",
        "Source series for segmentation",
        "Femoral cartilage",
        "Medial meniscus",
        "Cartilage thickness",
        "Medial weight-bearing femoral cartilage",
        "BScore",
        "1.2345",
        "(mm3,UCUM,",
        "(1,UCUM,\"no units\")",
        seg.sop_instance_uid.as_str(),
    ] {
        assert!(dump.contains(want), "dsrdump lacks {want}:\n{dump}");
    }
    let femoral_volume = ds(volumes[2]);
    assert!(
        dump.contains(&format!("\"{femoral_volume}\"")),
        "volume {femoral_volume}:\n{dump}"
    );

    let (ok, xml) = tool("dsr2xml", &[], &out);
    assert!(ok, "dsr2xml failed:\n{xml}");
    assert!(xml.contains(&summary.sop_instance_uid), "{xml}");
    // 9 volumes, 3 regions × 4 thickness values, 1 BScore.
    let values = xml.matches("<num>").count();
    assert_eq!(values, 9 + 12 + 1, "{xml}");
    assert!(xml.contains("<value>2.25</value>"), "{xml}");
}
