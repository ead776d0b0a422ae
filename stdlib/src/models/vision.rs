//! `unet_tiny` (image → one-channel mask) and `crnn_tiny` (word crop → text) on candle.
//!
//! These stand in for real compute cost: `marsc weights init` gives them deterministic random
//! weights, and nothing anywhere claims their outputs mean anything. Shapes:
//!
//! - `unet_tiny` (channels `c`, input resized to `image_size`², a multiple of 4): conv3×3 3→c,
//!   pool, conv c→2c, pool, conv 2c→4c, upsample + skip, conv 6c→2c, upsample + skip, conv
//!   3c→c, conv1×1 c→1, sigmoid. Output `Tensor<f32, [1, S, S]>`.
//! - `crnn_tiny` (input resized to `image_size` high × 4·`image_size` wide): conv3×3 3→16, pool,
//!   conv 16→32, pool, then each of the `image_size` columns through a 2-layer classifier over
//!   the alphabet plus a CTC blank, greedy CTC decoding (repeats collapsed, blanks dropped).
//!   There is no recurrent layer: the per-column classifier carries the cost.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use mars_runtime::ImageData;

use super::transformer_lm::SplitMix;

fn conv(x: &Tensor, t: &HashMap<String, Tensor>, name: &str, pad: usize) -> Result<Tensor> {
    let w = get(t, &format!("{name}.w"))?;
    let b = get(t, &format!("{name}.b"))?;
    x.conv2d(w, pad, 1, 1, 1)?
        .broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)
}

fn get<'a>(t: &'a HashMap<String, Tensor>, name: &str) -> Result<&'a Tensor> {
    t.get(name)
        .ok_or_else(|| candle_core::Error::msg(format!("the weights have no tensor `{name}`")))
}

/// Images resized to `h`×`w`, as `[b, 3, h, w]` in [0, 1].
pub fn image_batch(images: &[&ImageData], h: u32, w: u32) -> Result<Tensor> {
    let mut data = Vec::with_capacity(images.len() * 3 * (h * w) as usize);
    for img in images {
        let r = crate::image::resize(img, w, h);
        for c in 0..3 {
            data.extend(
                r.rgb
                    .iter()
                    .skip(c)
                    .step_by(3)
                    .map(|&v| f32::from(v) / 255.0),
            );
        }
    }
    Tensor::from_vec(
        data,
        (images.len(), 3, h as usize, w as usize),
        &Device::Cpu,
    )
}

/// Tensor shapes of `unet_tiny` with `c` channels.
pub fn unet_shapes(c: usize) -> Vec<(String, Vec<usize>)> {
    [
        ("enc1", c, 3, 3),
        ("enc2", 2 * c, c, 3),
        ("mid", 4 * c, 2 * c, 3),
        ("dec2", 2 * c, 6 * c, 3),
        ("dec1", c, 3 * c, 3),
        ("out", 1, c, 1),
    ]
    .iter()
    .flat_map(|&(n, o, i, k)| {
        [
            (format!("{n}.w"), vec![o, i, k, k]),
            (format!("{n}.b"), vec![o]),
        ]
    })
    .collect()
}

/// `unet_tiny` forward: `[b, 3, s, s]` → masks `[b, 1, s, s]`.
pub fn unet_forward(t: &HashMap<String, Tensor>, x: &Tensor) -> Result<Tensor> {
    let (_, _, s, _) = x.dims4()?;
    let e1 = conv(x, t, "enc1", 1)?.relu()?;
    let e2 = conv(&e1.max_pool2d(2)?, t, "enc2", 1)?.relu()?;
    let m = conv(&e2.max_pool2d(2)?, t, "mid", 1)?.relu()?;
    let d2 = Tensor::cat(&[&m.upsample_nearest2d(s / 2, s / 2)?, &e2], 1)?;
    let d2 = conv(&d2, t, "dec2", 1)?.relu()?;
    let d1 = Tensor::cat(&[&d2.upsample_nearest2d(s, s)?, &e1], 1)?;
    let d1 = conv(&d1, t, "dec1", 1)?.relu()?;
    let logits = conv(&d1, t, "out", 0)?;
    (logits.neg()?.exp()? + 1.0)?.recip()
}

/// Tensor shapes of `crnn_tiny` with image height `s` and `classes` outputs per column
/// (alphabet + blank).
pub fn crnn_shapes(s: usize, classes: usize) -> Vec<(String, Vec<usize>)> {
    let feat = 32 * (s / 4);
    vec![
        ("conv1.w".into(), vec![16, 3, 3, 3]),
        ("conv1.b".into(), vec![16]),
        ("conv2.w".into(), vec![32, 16, 3, 3]),
        ("conv2.b".into(), vec![32]),
        ("fc1.w".into(), vec![128, feat]),
        ("fc1.b".into(), vec![128]),
        ("fc2.w".into(), vec![classes, 128]),
        ("fc2.b".into(), vec![classes]),
    ]
}

/// `crnn_tiny` forward: `[b, 3, s, 4s]` → per-column class ids `[b][s]`.
pub fn crnn_forward(t: &HashMap<String, Tensor>, x: &Tensor) -> Result<Vec<Vec<u32>>> {
    let (b, _, _, _) = x.dims4()?;
    let f = conv(x, t, "conv1", 1)?.relu()?.max_pool2d(2)?;
    let f = conv(&f, t, "conv2", 1)?.relu()?.max_pool2d(2)?;
    let (_, c, h, w) = f.dims4()?;
    // One feature vector per column: [b * w, c * h].
    let cols = f.permute((0, 3, 1, 2))?.reshape((b * w, c * h))?;
    let lin = |x: &Tensor, n: &str| -> Result<Tensor> {
        x.matmul(&get(t, &format!("{n}.w"))?.t()?)?
            .broadcast_add(get(t, &format!("{n}.b"))?)
    };
    let logits = lin(&lin(&cols, "fc1")?.relu()?, "fc2")?;
    let ids = logits.argmax(1)?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    Ok(ids.chunks(w).map(<[u32]>::to_vec).collect())
}

/// Greedy CTC: collapse repeats, drop blanks (id 0), map ids to the alphabet.
pub fn ctc_decode(ids: &[u32], alphabet: &[char]) -> String {
    let mut out = String::new();
    let mut prev = 0;
    for &i in ids {
        if i != 0 && i != prev {
            if let Some(&c) = alphabet.get(i as usize - 1) {
                out.push(c);
            }
        }
        prev = i;
    }
    out
}

/// Deterministic random tensors for `shapes` (He-scaled normal weights, zero biases).
pub fn random_tensors(
    shapes: &[(String, Vec<usize>)],
    seed: u64,
) -> Result<HashMap<String, Tensor>> {
    let mut rng = SplitMix(seed);
    let mut out = HashMap::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let std = (2.0 / fan_in as f64).sqrt();
        let data: Vec<f32> = if name.ends_with(".b") {
            vec![0.0; n]
        } else {
            (0..n).map(|_| (rng.normal() * std) as f32).collect()
        };
        out.insert(
            name.clone(),
            Tensor::from_vec(data, shape.as_slice(), &Device::Cpu)?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_flow_through() {
        let t = random_tensors(&unet_shapes(4), 1).expect("weights");
        let img = ImageData {
            width: 10,
            height: 6,
            rgb: vec![100; 180],
        };
        let x = image_batch(&[&img, &img], 16, 16).expect("batch");
        let m = unet_forward(&t, &x).expect("forward");
        assert_eq!(m.dims(), &[2, 1, 16, 16]);
        let t = random_tensors(&crnn_shapes(16, 5), 2).expect("weights");
        let x = image_batch(&[&img], 16, 64).expect("batch");
        let ids = crnn_forward(&t, &x).expect("forward");
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].len(), 16);
        assert_eq!(ctc_decode(&[0, 1, 1, 0, 1, 2, 2, 0], &['a', 'b']), "aab");
    }
}
