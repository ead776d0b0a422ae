//! The NumPy `.npy` file format (versions 1.0, 2.0 and 3.0), for `{"$npy": "path"}` tensors at
//! the edges of a run. Reads C-order arrays of floats, integers and booleans of either byte
//! order as `f32` (Mars tensors hold `f32`); writes little-endian `f32` (`<f4`).

/// Parse an `.npy` file: its shape and its elements as `f32`, in C order.
pub fn read(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if !bytes.starts_with(MAGIC) || bytes.len() < 10 {
        return Err("not an .npy file (no \\x93NUMPY magic)".into());
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!(".npy version {v} is not supported (1, 2 or 3)")),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let descr = dict_value(header, "descr")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran = dict_value(header, "fortran_order")?;
    if fortran.trim() != "False" {
        return Err("Fortran-order .npy arrays are not supported; save with order='C'".into());
    }
    let shape_text = dict_value(header, "shape")?;
    let shape: Vec<usize> = shape_text
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("bad .npy shape `{shape_text}`"))
        })
        .collect::<Result<_, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .ok_or_else(|| format!(".npy shape {shape:?} has more elements than memory can hold"))?;
    let data = &bytes[start + header_len..];
    let (order, kind) = descr.split_at(1.min(descr.len()));
    let little = match order {
        "<" | "|" | "=" => true,
        ">" => false,
        _ => return Err(format!("unsupported .npy dtype `{descr}`")),
    };
    let size: usize = kind
        .get(1..)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("unsupported .npy dtype `{descr}`"))?;
    if size == 0 || size > 8 {
        return Err(format!("unsupported .npy dtype `{descr}`"));
    }
    let needed = count.checked_mul(size).ok_or_else(|| {
        format!(".npy shape {shape:?} of `{descr}` needs more bytes than memory can hold")
    })?;
    if data.len() < needed {
        return Err(format!(
            ".npy data holds {} bytes; shape {:?} of `{descr}` needs {}",
            data.len(),
            shape,
            needed
        ));
    }
    let word = |chunk: &[u8]| -> u64 {
        let mut b = [0u8; 8];
        if little {
            b[..size].copy_from_slice(chunk);
            u64::from_le_bytes(b)
        } else {
            b[8 - size..].copy_from_slice(chunk);
            u64::from_be_bytes(b)
        }
    };
    let chunks = data[..needed].chunks_exact(size);
    let values: Vec<f32> = match (kind.as_bytes()[0], size) {
        (b'f', 4) => chunks.map(|c| f32::from_bits(word(c) as u32)).collect(),
        (b'f', 8) => chunks.map(|c| f64::from_bits(word(c)) as f32).collect(),
        (b'f', 2) => chunks.map(|c| f16_to_f32(word(c) as u16)).collect(),
        (b'i', 1 | 2 | 4 | 8) => {
            let shift = 64 - 8 * size as u32;
            chunks
                .map(|c| (((word(c) << shift) as i64) >> shift) as f32)
                .collect()
        }
        (b'u', 1 | 2 | 4 | 8) | (b'b', 1) => chunks.map(|c| word(c) as f32).collect(),
        _ => return Err(format!("unsupported .npy dtype `{descr}`")),
    };
    Ok((shape, values))
}

/// Write `data` of `shape` as a version 1.0 `.npy` file of `<f4`.
pub fn write(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so that the data starts at a multiple of 64 bytes, ending the header with a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// The text of `key`'s value in a Python dict literal (as NumPy writes it).
fn dict_value<'a>(header: &'a str, key: &str) -> Result<&'a str, String> {
    let missing = || format!("the .npy header has no `{key}`");
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))
        .ok_or_else(missing)?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')
        .ok_or_else(missing)?
        .trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|i| i + 1)
    } else {
        rest.find([',', '}'])
    }
    .ok_or_else(missing)?;
    Ok(&rest[..end])
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: normalize.
            let mut e = 127 - 15 + 1;
            let mut f = f;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back() {
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let bytes = write(&[2, 3, 4], &data);
        assert_eq!(
            (10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64,
            0
        );
        assert_eq!(read(&bytes).expect("reads"), (vec![2, 3, 4], data));
        let one = write(&[3], &[1.0, 2.0, 3.0]);
        assert_eq!(read(&one).expect("reads"), (vec![3], vec![1.0, 2.0, 3.0]));
    }

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn numpy_dtypes_of_either_byte_order_read_as_f32() {
        let i2: Vec<u8> = [-2i16, 7].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            read(&npy("<i2", "(2,)", &i2)).expect("i2").1,
            vec![-2.0, 7.0]
        );
        let f8: Vec<u8> = [1.5f64, -0.25]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        assert_eq!(
            read(&npy(">f8", "(1, 2)", &f8)).expect("f8"),
            (vec![1, 2], vec![1.5, -0.25])
        );
        assert_eq!(
            read(&npy("|u1", "(3,)", &[0, 200, 255])).expect("u1").1,
            vec![0.0, 200.0, 255.0]
        );
        assert_eq!(
            read(&npy("|b1", "(2,)", &[1, 0])).expect("b1").1,
            vec![1.0, 0.0]
        );
        // 1.0, -2.0 and 65504 as half floats.
        let f2: Vec<u8> = [0x3c00u16, 0xc000, 0x7bff]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(
            read(&npy("<f2", "(3,)", &f2)).expect("f2").1,
            vec![1.0, -2.0, 65504.0]
        );
        assert_eq!(
            read(&npy("<f4", "()", &2.5f32.to_le_bytes())).expect("scalar"),
            (vec![], vec![2.5])
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert!(read(b"PK\x03\x04").expect_err("zip").contains("magic"));
        assert!(read(&npy("<c8", "(1,)", &[0; 8]))
            .expect_err("complex")
            .contains("dtype"));
        assert!(read(&npy("<f4", "(4,)", &[0; 8]))
            .expect_err("short")
            .contains("needs 16"));
        // Shapes whose element or byte count overflows (a size check that wrapped would
        // pass and then slice out of bounds).
        let e = read(&npy("<f4", "(4611686018427387904,)", &[0; 8])).expect_err("2^62 x 4");
        assert!(e.contains("more bytes than memory"), "{e}");
        let e = read(&npy("<f4", "(4294967296, 4294967296)", &[0; 8])).expect_err("2^64");
        assert!(e.contains("more elements than memory"), "{e}");
        let fortran = npy("<f4", "(1,)", &[0; 4]);
        let text = String::from_utf8_lossy(&fortran).replace("False", "True ");
        assert!(read(text.as_bytes()).is_err());
    }
}
