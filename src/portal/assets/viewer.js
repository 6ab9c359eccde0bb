/*
 * kneenode mesh viewer: the job page's 3D view of the bone and cartilage meshes, bones coloured
 * by cartilage thickness. Self-contained WebGL, no libraries; served by the node from the binary.
 *
 * The page provides:
 *   <canvas id="viewer" data-manifest="/jobs/<id>/meshes.json" data-mesh-base="/jobs/<id>/meshes/">
 *   <div id="viewer-legend">, <div id="viewer-layers">, <div id="viewer-status">  (all optional)
 * The manifest lists the meshes (name, tissue, kind, has_thickness), the thickness range over
 * all bones (one colour scale) and the union of their bounds; each mesh is fetched as
 * <mesh-base><name>.bin in the KNMESH1 format (see src/portal/meshview.rs).
 * When every mesh is drawn, canvas.dataset.ready = "1" and the status says "N meshes loaded";
 * on a failure that leaves nothing to show, dataset.ready = "error".
 *
 * Mouse: drag to orbit, wheel to zoom, double-click to reset. Touch: one finger orbits, two
 * pinch to zoom.
 */
(function () {
  'use strict';

  // Viridis (matplotlib), sampled at 0, 0.1, …, 1 and interpolated linearly: perceptually
  // uniform, readable in grey scale and by most colour-blind readers.
  const VIRIDIS = [
    [0.267, 0.005, 0.329], [0.283, 0.141, 0.458], [0.254, 0.265, 0.530], [0.207, 0.372, 0.553],
    [0.164, 0.471, 0.558], [0.128, 0.567, 0.551], [0.135, 0.659, 0.518], [0.267, 0.749, 0.441],
    [0.478, 0.821, 0.318], [0.741, 0.873, 0.150], [0.993, 0.906, 0.144],
  ];
  const BONE = [0.89, 0.86, 0.80];          // bone without cartilage (value 0 or NaN)
  const CARTILAGE = {                        // translucent cartilage, one hue per plate
    femur_cart_0: [0.35, 0.60, 0.95],
    tibia_cart_0: [0.30, 0.80, 0.75],
    tibia_cart_1: [0.95, 0.60, 0.30],
    patella_cart_0: [0.85, 0.45, 0.75],
  };
  const CARTILAGE_ALPHA = 0.45;
  const FOV = Math.PI / 5;                   // vertical field of view, 36°

  function viridis(t) {
    const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    const f = x - i;
    return [0, 1, 2].map((c) => VIRIDIS[i][c] * (1 - f) + VIRIDIS[i + 1][c] * f);
  }

  // ---- Small column-major 4×4 matrix helpers (the layout WebGL's uniformMatrix4fv expects).

  function perspective(fovy, aspect, near, far) {
    const f = 1 / Math.tan(fovy / 2);
    const nf = 1 / (near - far);
    return new Float32Array([f / aspect, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) * nf, -1,
      0, 0, 2 * far * near * nf, 0]);
  }

  function normalize(v) {
    const l = Math.hypot(v[0], v[1], v[2]) || 1;
    return [v[0] / l, v[1] / l, v[2] / l];
  }

  function cross(a, b) {
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
  }

  function dot(a, b) {
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  }

  function lookAt(eye, target, up) {
    const z = normalize([eye[0] - target[0], eye[1] - target[1], eye[2] - target[2]]);
    const x = normalize(cross(up, z));
    const y = cross(z, x);
    return new Float32Array([x[0], y[0], z[0], 0, x[1], y[1], z[1], 0, x[2], y[2], z[2], 0,
      -dot(x, eye), -dot(y, eye), -dot(z, eye), 1]);
  }

  // ---- Shaders: per-vertex (Gouraud) lighting from a headlight, two-sided so that open or
  // inside-out surfaces still read. GLSL ES 1.00 works on WebGL 1 and 2.

  const VERTEX_SHADER = `
    attribute vec3 aPos;
    attribute vec3 aNormal;
    attribute vec3 aColor;
    uniform mat4 uView;
    uniform mat4 uProj;
    uniform mat3 uNormalMat;
    uniform float uAlpha;
    varying vec4 vColor;
    void main() {
      vec4 eye = uView * vec4(aPos, 1.0);
      vec3 n = normalize(uNormalMat * aNormal);
      vec3 v = normalize(-eye.xyz);          // the light sits at the camera
      float d = abs(dot(n, v));
      float s = pow(d, 60.0) * 0.15;
      vColor = vec4(aColor * (0.28 + 0.72 * d) + vec3(s), uAlpha);
      gl_Position = uProj * eye;
    }`;
  const FRAGMENT_SHADER = `
    precision mediump float;
    varying vec4 vColor;
    void main() { gl_FragColor = vColor; }`;

  function compile(gl, type, source) {
    const s = gl.createShader(type);
    gl.shaderSource(s, source);
    gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
    return s;
  }

  function program(gl) {
    const p = gl.createProgram();
    gl.attachShader(p, compile(gl, gl.VERTEX_SHADER, VERTEX_SHADER));
    gl.attachShader(p, compile(gl, gl.FRAGMENT_SHADER, FRAGMENT_SHADER));
    gl.linkProgram(p);
    if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(p));
    const loc = {};
    ['aPos', 'aNormal', 'aColor'].forEach((a) => { loc[a] = gl.getAttribLocation(p, a); });
    ['uView', 'uProj', 'uNormalMat', 'uAlpha'].forEach((u) => { loc[u] = gl.getUniformLocation(p, u); });
    return { p, loc };
  }

  // ---- The KNMESH1 payload: header, then f32 positions, f32 normals, u32 indices, f32 scalars.

  const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

  function parseMesh(buf) {
    const magic = 'KNMESH1\0';
    const head = new Uint8Array(buf, 0, Math.min(8, buf.byteLength));
    for (let i = 0; i < 8; i++) {
      if (head[i] !== magic.charCodeAt(i)) throw new Error('not a KNMESH1 payload');
    }
    const dv = new DataView(buf);
    const nv = dv.getUint32(8, true);
    const nt = dv.getUint32(12, true);
    const hasScalars = (dv.getUint32(16, true) & 1) === 1;
    const want = 20 + 24 * nv + 12 * nt + (hasScalars ? 4 * nv : 0);
    if (buf.byteLength !== want) throw new Error(`payload is ${buf.byteLength} bytes, not ${want}`);
    // Typed arrays use the machine's byte order; read through a DataView on the rare other one.
    const read = (Type, getter, offset, count) => {
      if (LITTLE_ENDIAN) return new Type(buf, offset, count);
      const out = new Type(count);
      for (let i = 0; i < count; i++) out[i] = dv[getter](offset + 4 * i, true);
      return out;
    };
    let at = 20;
    const positions = read(Float32Array, 'getFloat32', at, 3 * nv); at += 12 * nv;
    const normals = read(Float32Array, 'getFloat32', at, 3 * nv); at += 12 * nv;
    const indices = read(Uint32Array, 'getUint32', at, 3 * nt); at += 12 * nt;
    const scalars = hasScalars ? read(Float32Array, 'getFloat32', at, nv) : null;
    return { nv, positions, normals, indices, scalars };
  }

  // Per-vertex colours: bones by thickness over the shared range, cartilage in its own hue.
  function colours(entry, mesh, range) {
    const out = new Float32Array(3 * mesh.nv);
    const span = range ? (range.max - range.min) || 1 : 1;
    for (let i = 0; i < mesh.nv; i++) {
      let c = CARTILAGE[entry.name] || BONE;
      if (entry.kind === 'bone' && mesh.scalars && range) {
        const v = mesh.scalars[i];
        if (v > 0) c = viridis((v - range.min) / span); // NaN and 0: no cartilage here
      }
      out.set(c, 3 * i);
    }
    return out;
  }

  function el(tag, text, className) {
    const e = document.createElement(tag);
    if (text) e.textContent = text;
    if (className) e.className = className;
    return e;
  }

  // Gradient bar with min/max labels, and a swatch for bone without cartilage.
  function drawLegend(root, range) {
    if (!root) return;
    root.textContent = '';
    if (!range) {
      root.appendChild(el('span', 'No cartilage thickness in these results.'));
      return;
    }
    root.appendChild(el('div', 'Cartilage thickness (mm)', 'viewer-legend-title'));
    const bar = el('canvas', '', 'viewer-legend-bar');
    bar.width = 200;
    bar.height = 12;
    bar.style.verticalAlign = 'middle';
    bar.style.margin = '0 0.5em';
    const ctx = bar.getContext('2d');
    for (let x = 0; x < bar.width; x++) {
      const c = viridis(x / (bar.width - 1)).map((v) => Math.round(255 * v));
      ctx.fillStyle = `rgb(${c[0]},${c[1]},${c[2]})`;
      ctx.fillRect(x, 0, 1, bar.height);
    }
    const row = el('div');
    row.appendChild(el('span', range.min.toFixed(1), 'viewer-legend-min'));
    row.appendChild(bar);
    row.appendChild(el('span', `${range.max.toFixed(1)} mm`, 'viewer-legend-max'));
    root.appendChild(row);
    const swatch = el('canvas', '', 'viewer-legend-none');
    swatch.width = 12;
    swatch.height = 12;
    swatch.style.verticalAlign = 'middle';
    swatch.style.marginRight = '0.5em';
    const s = swatch.getContext('2d');
    s.fillStyle = `rgb(${BONE.map((v) => Math.round(255 * v)).join(',')})`;
    s.fillRect(0, 0, 12, 12);
    const none = el('div');
    none.appendChild(swatch);
    none.appendChild(document.createTextNode('no cartilage'));
    root.appendChild(none);
  }

  function start(canvas) {
    const status = document.getElementById('viewer-status');
    const say = (text) => { if (status) status.textContent = text; };
    const fail = (text) => { say(text); canvas.dataset.ready = 'error'; };

    const opts = { antialias: true, preserveDrawingBuffer: true };
    let gl = canvas.getContext('webgl2', opts);
    const webgl2 = !!gl;
    if (!gl) gl = canvas.getContext('webgl', opts) || canvas.getContext('experimental-webgl', opts);
    if (!gl) {
      fail('3D view unavailable: this browser has WebGL switched off or does not support it.');
      return;
    }
    // 32-bit indices: core in WebGL 2, an extension (nearly universal) in WebGL 1.
    const uint32 = webgl2 || !!gl.getExtension('OES_element_index_uint');
    let prog;
    try {
      prog = program(gl);
    } catch (e) {
      fail(`3D view unavailable: ${e.message}`);
      return;
    }
    canvas.addEventListener('webglcontextlost', (e) => {
      e.preventDefault();
      fail('The 3D view lost its graphics context; reload the page to show it again.');
    });

    const meshes = [];                         // uploaded meshes, in manifest order
    const cam = { target: [0, 0, 0], radius: 100, yaw: 0, pitch: 0, dist: 300 };
    let home = null;                           // the fitted camera, for double-click

    // Fit the camera to bounds {min, max}: look from anterior (−y in LPS), superior up.
    function fit(b) {
      cam.target = [0, 1, 2].map((i) => (b.min[i] + b.max[i]) / 2);
      cam.radius = Math.max(1e-3, Math.hypot(...[0, 1, 2].map((i) => b.max[i] - b.min[i])) / 2);
      cam.yaw = 0;
      cam.pitch = 0.15;
      cam.dist = (cam.radius / Math.sin(FOV / 2)) * 1.05;
      home = Object.assign({}, cam);
    }

    function upload(entry, mesh, range) {
      const buffer = (target, data) => {
        const b = gl.createBuffer();
        gl.bindBuffer(target, b);
        gl.bufferData(target, data, gl.STATIC_DRAW);
        return b;
      };
      let indices = mesh.indices;
      let type = gl.UNSIGNED_INT;
      if (!uint32) {
        if (mesh.nv > 65536) throw new Error('mesh too large for this browser\'s WebGL');
        indices = Uint16Array.from(indices);
        type = gl.UNSIGNED_SHORT;
      }
      return {
        entry,
        visible: entry.kind === 'bone' || !range,  // cartilage hides the thickness map: off then
        alpha: entry.kind === 'bone' ? 1 : CARTILAGE_ALPHA,
        pos: buffer(gl.ARRAY_BUFFER, mesh.positions),
        nrm: buffer(gl.ARRAY_BUFFER, mesh.normals),
        col: buffer(gl.ARRAY_BUFFER, colours(entry, mesh, range)),
        idx: buffer(gl.ELEMENT_ARRAY_BUFFER, indices),
        count: indices.length,
        type,
        bounds: boundsOf(mesh.positions),
      };
    }

    function boundsOf(p) {
      const b = { min: [Infinity, Infinity, Infinity], max: [-Infinity, -Infinity, -Infinity] };
      for (let i = 0; i < p.length; i += 3) {
        for (let a = 0; a < 3; a++) {
          b.min[a] = Math.min(b.min[a], p[i + a]);
          b.max[a] = Math.max(b.max[a], p[i + a]);
        }
      }
      return b;
    }

    function draw() {
      const dpr = window.devicePixelRatio || 1;
      const w = Math.max(1, Math.round((canvas.clientWidth || canvas.width) * dpr));
      const h = Math.max(1, Math.round((canvas.clientHeight || canvas.height) * dpr));
      if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
      gl.viewport(0, 0, w, h);
      gl.clearColor(0.11, 0.12, 0.14, 1);
      gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
      gl.enable(gl.DEPTH_TEST);

      const cp = Math.cos(cam.pitch);
      const dir = [cp * Math.sin(cam.yaw), -cp * Math.cos(cam.yaw), Math.sin(cam.pitch)];
      const eye = [0, 1, 2].map((i) => cam.target[i] + cam.dist * dir[i]);
      const view = lookAt(eye, cam.target, [0, 0, 1]);
      const near = Math.max(cam.dist - 2 * cam.radius, cam.dist * 0.01);
      const proj = perspective(FOV, w / h, near, cam.dist + 2 * cam.radius);
      // The view is a rotation plus a translation: its upper 3×3 block turns normals too.
      const nmat = new Float32Array([view[0], view[1], view[2], view[4], view[5], view[6],
        view[8], view[9], view[10]]);
      gl.useProgram(prog.p);
      gl.uniformMatrix4fv(prog.loc.uView, false, view);
      gl.uniformMatrix4fv(prog.loc.uProj, false, proj);
      gl.uniformMatrix3fv(prog.loc.uNormalMat, false, nmat);

      const attrib = (loc, buf) => {
        gl.bindBuffer(gl.ARRAY_BUFFER, buf);
        gl.enableVertexAttribArray(loc);
        gl.vertexAttribPointer(loc, 3, gl.FLOAT, false, 0, 0);
      };
      const drawMesh = (m) => {
        gl.uniform1f(prog.loc.uAlpha, m.alpha);
        attrib(prog.loc.aPos, m.pos);
        attrib(prog.loc.aNormal, m.nrm);
        attrib(prog.loc.aColor, m.col);
        gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, m.idx);
        gl.drawElements(gl.TRIANGLES, m.count, m.type, 0);
      };
      // Opaque bones first; then translucent cartilage, front faces only, without depth writes
      // so that the plates behind one another all show.
      meshes.filter((m) => m.visible && m.alpha >= 1).forEach(drawMesh);
      gl.enable(gl.BLEND);
      gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
      gl.enable(gl.CULL_FACE);
      gl.depthMask(false);
      meshes.filter((m) => m.visible && m.alpha < 1).forEach(drawMesh);
      gl.depthMask(true);
      gl.disable(gl.CULL_FACE);
      gl.disable(gl.BLEND);
    }

    let pending = false;
    const redraw = () => {
      if (pending) return;
      pending = true;
      window.requestAnimationFrame(() => { pending = false; draw(); });
    };
    window.addEventListener('resize', redraw);

    // ---- Interaction through pointer events: mouse, pen and touch alike.
    // A canvas the page's CSS does not size shows at its attribute size; pin that as its CSS
    // size, or resizing the drawing buffer for high-DPI screens would grow it on every frame.
    if (canvas.clientWidth === canvas.width && canvas.clientHeight === canvas.height) {
      canvas.style.width = `${canvas.width}px`;
      canvas.style.height = `${canvas.height}px`;
    }

    const pointers = new Map();
    let pinch = 0;
    canvas.style.touchAction = 'none';
    canvas.addEventListener('pointerdown', (e) => {
      try { canvas.setPointerCapture(e.pointerId); } catch (_) { /* pointer already gone */ }
      pointers.set(e.pointerId, [e.clientX, e.clientY]);
      pinch = 0;
    });
    canvas.addEventListener('pointermove', (e) => {
      const last = pointers.get(e.pointerId);
      if (!last) return;
      const now = [e.clientX, e.clientY];
      pointers.set(e.pointerId, now);
      if (pointers.size === 1) {
        cam.yaw -= (now[0] - last[0]) * 0.01;
        cam.pitch = Math.max(-1.55, Math.min(1.55, cam.pitch + (now[1] - last[1]) * 0.01));
      } else if (pointers.size === 2) {
        const [a, b] = Array.from(pointers.values());
        const d = Math.hypot(a[0] - b[0], a[1] - b[1]);
        if (pinch > 0 && d > 0) zoom(pinch / d);
        pinch = d;
      }
      redraw();
    });
    const release = (e) => { pointers.delete(e.pointerId); pinch = 0; };
    canvas.addEventListener('pointerup', release);
    canvas.addEventListener('pointercancel', release);
    function zoom(factor) {
      cam.dist = Math.max(cam.radius * 0.3, Math.min(cam.radius * 20, cam.dist * factor));
    }
    canvas.addEventListener('wheel', (e) => {
      e.preventDefault();
      const lines = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1;
      zoom(Math.exp(Math.max(-100, Math.min(100, e.deltaY * lines)) * 0.002));
      redraw();
    }, { passive: false });
    canvas.addEventListener('dblclick', () => {
      if (home) Object.assign(cam, home);
      redraw();
    });

    // One checkbox per mesh, in #viewer-layers.
    function addLayer(m) {
      const root = document.getElementById('viewer-layers');
      if (!root) return;
      const label = el('label', '', 'viewer-layer');
      const box = el('input');
      box.type = 'checkbox';
      box.checked = m.visible;
      box.dataset.mesh = m.entry.name;
      box.addEventListener('change', () => { m.visible = box.checked; redraw(); });
      label.appendChild(box);
      label.appendChild(document.createTextNode(` ${m.entry.tissue}`));
      root.appendChild(label);
    }

    // ---- Loading: the manifest, then every mesh at once; each is drawn as it arrives.
    const get = (url) => fetch(url, { credentials: 'same-origin' }).then((r) => {
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      return r;
    });
    say('Loading the meshes…');
    get(canvas.dataset.manifest).then((r) => r.json()).then((manifest) => {
      const entries = manifest.meshes || [];
      const range = manifest.thickness || null;
      drawLegend(document.getElementById('viewer-legend'), range);
      if (manifest.bounds) fit(manifest.bounds);
      if (entries.length === 0) {
        say('No meshes in these results.');
        canvas.dataset.ready = '1';
        return null;
      }
      const slots = new Array(entries.length).fill(null);
      let failed = 0;
      const base = canvas.dataset.meshBase || '';
      return Promise.all(entries.map((entry, i) =>
        get(`${base}${encodeURIComponent(entry.name)}.bin`)
          .then((r) => r.arrayBuffer())
          .then((buf) => {
            slots[i] = upload(entry, parseMesh(buf), range);
            // Keep the manifest's order (bones first) whatever order the answers come in.
            meshes.length = 0;
            slots.forEach((m) => { if (m) meshes.push(m); });
            redraw();
          })
          .catch((e) => {
            failed += 1;
            console.warn(`mesh ${entry.name}: ${e.message}`);
          }))).then(() => {
        meshes.forEach(addLayer);
        if (meshes.length === 0) {
          fail('The meshes could not be loaded.');
          return;
        }
        if (!home) {
          const all = meshes.map((m) => m.bounds);
          fit({
            min: [0, 1, 2].map((a) => Math.min(...all.map((b) => b.min[a]))),
            max: [0, 1, 2].map((a) => Math.max(...all.map((b) => b.max[a]))),
          });
        }
        draw();
        const n = meshes.length;
        say(`${n} meshes loaded${failed ? `, ${failed} failed` : ''}`);
        canvas.dataset.ready = '1';
      });
    }).catch((e) => fail(`The meshes could not be loaded (${e.message}).`));
  }

  function boot() {
    const canvas = document.querySelector('canvas#viewer');
    if (canvas) start(canvas);
  }
  // Normally loaded with `defer` or at the end of the body; run at once if the DOM is ready.
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
}());
