//! The preview: a PNG montage of slices of the image with the segmentation overlaid, so a
//! clinician sees at a glance whether the result is plausible before opening a viewer.

use std::path::Path;

use crate::volume::Volume;

/// Overlay colours (RGB) by label, the same hues as the SEG's recommended display colours.
const COLOURS: [[u8; 3]; 10] = [
    [0, 0, 0],
    [255, 170, 60],  // patellar cartilage
    [240, 220, 40],  // femoral cartilage
    [170, 90, 255],  // medial tibial cartilage
    [60, 200, 255],  // lateral tibial cartilage
    [40, 200, 90],   // medial meniscus
    [0, 130, 60],    // lateral meniscus
    [230, 80, 80],   // femur
    [90, 120, 230],  // tibia
    [220, 110, 200], // patella
];

/// How many slices the montage shows.
pub const PANELS: usize = 4;

fn colour(label: u8) -> [u8; 3] {
    COLOURS
        .get(usize::from(label))
        .copied()
        .unwrap_or([255, 255, 255])
}

/// Grey level window: the 1st and 99th percentile of the image.
fn window(image: &Volume<f32>) -> (f32, f32) {
    let mut sample: Vec<f32> = image
        .data()
        .iter()
        .step_by((image.len() / 200_000).max(1))
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    if sample.is_empty() {
        return (0.0, 1.0);
    }
    sample.sort_by(f32::total_cmp);
    let at = |q: f64| sample[((sample.len() - 1) as f64 * q).round() as usize];
    let (lo, hi) = (at(0.01), at(0.99));
    (lo, if hi > lo { hi } else { lo + 1.0 })
}

/// The slices (along k) to show: evenly spread over the slices that hold any label, or over the
/// whole volume when none does.
pub fn pick_slices(labels: &Volume<u8>, n: usize) -> Vec<usize> {
    let [ni, nj, nk] = labels.dims();
    let plane = ni * nj;
    let labelled: Vec<usize> = (0..nk)
        .filter(|&k| {
            labels.data()[k * plane..(k + 1) * plane]
                .iter()
                .any(|&l| l != 0)
        })
        .collect();
    let (lo, hi) = match (labelled.first(), labelled.last()) {
        (Some(&a), Some(&b)) => (a, b),
        _ => (0, nk.saturating_sub(1)),
    };
    (0..n)
        .map(|p| lo + ((hi - lo) as f64 * (p as f64 + 1.0) / (n as f64 + 1.0)).round() as usize)
        .collect()
}

/// Renders the montage as RGB rows: `PANELS` slices side by side, image in grey, labels blended
/// at `alpha`. Returns (width, height, pixels).
pub fn render(image: &Volume<f32>, labels: &Volume<u8>, alpha: f32) -> (u32, u32, Vec<u8>) {
    let [ni, nj, _] = image.dims();
    let (lo, hi) = window(image);
    let slices = pick_slices(labels, PANELS);
    let width = ni * slices.len();
    let mut rgb = vec![0u8; width * nj * 3];
    for (p, &k) in slices.iter().enumerate() {
        for j in 0..nj {
            for i in 0..ni {
                let v = image.get(i, j, k).copied().unwrap_or(0.0);
                let g = ((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0;
                let label = labels.get(i, j, k).copied().unwrap_or(0);
                let px = if label == 0 {
                    [g; 3]
                } else {
                    let c = colour(label);
                    [0, 1, 2].map(|ch| g * (1.0 - alpha) + f32::from(c[ch]) * alpha)
                };
                let at = ((j * width) + p * ni + i) * 3;
                for ch in 0..3 {
                    rgb[at + ch] = px[ch].round() as u8;
                }
            }
        }
    }
    (width as u32, nj as u32, rgb)
}

/// Writes the montage PNG. `image` and `labels` must share a grid.
pub fn write_preview(path: &Path, image: &Volume<f32>, labels: &Volume<u8>) -> std::io::Result<()> {
    if image.dims() != labels.dims() {
        return Err(std::io::Error::other(format!(
            "preview: image {:?} and labels {:?} differ in size",
            image.dims(),
            labels.dims()
        )));
    }
    let (w, h, rgb) = render(image, labels, 0.45);
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(std::io::Error::other)?;
    writer
        .write_image_data(&rgb)
        .map_err(std::io::Error::other)?;
    writer.finish().map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Geometry;

    #[test]
    fn the_montage_shows_labelled_slices_in_colour() {
        let g = Geometry::default();
        let mut image = Volume::filled([8, 6, 20], 100.0f32, g);
        image.set(0, 0, 0, 0.0);
        let mut labels = Volume::filled([8, 6, 20], 0u8, g);
        for k in 5..15 {
            labels.set(2, 3, k, 7);
        }
        let slices = pick_slices(&labels, 4);
        assert!(slices.iter().all(|k| (5..15).contains(k)), "{slices:?}");
        let (w, h, rgb) = render(&image, &labels, 1.0);
        assert_eq!((w, h), (32, 6));
        let at = (3 * 32 + 2) * 3;
        assert_eq!(&rgb[at..at + 3], &COLOURS[7]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        write_preview(&path, &image, &labels).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (32, 6));
    }
}
