//! Frames in guest buffers → PNG (`cenallocctl snapshot`): the pixel
//! formats a capture device or a display writes, converted to 8-bit RGB or
//! grey and encoded with the `png` crate.
//!
//! | format | bytes per pixel | byte order | PNG |
//! | --- | --- | --- | --- |
//! | `gray` | 1 | Y | grey, the bytes as they are |
//! | `rgb24` | 3 | R, G, B (V4L2 `RGB3`) | RGB, the bytes as they are |
//! | `xrgb8888` | 4 | B, G, R, X (DRM `XRGB8888`, V4L2 `XR24`) | RGB |
//! | `yuyv` | 2 | Y0, U, Y1, V (V4L2 `YUYV`) | RGB, BT.601 limited range |
//!
//! Row `r` starts at `r * stride`; the last row needs only its pixels.

use std::io::Write;

/// A pixel format of a frame in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PixelFormat {
    Yuyv,
    Rgb24,
    Xrgb8888,
    Gray,
}

impl PixelFormat {
    pub fn bytes_per_pixel(self) -> u32 {
        match self {
            PixelFormat::Gray => 1,
            PixelFormat::Yuyv => 2,
            PixelFormat::Rgb24 => 3,
            PixelFormat::Xrgb8888 => 4,
        }
    }
}

/// Largest width and height accepted.
pub const MAX_DIMENSION: u32 = 16384;

/// Why a frame cannot be converted.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("width and height must be 1..={MAX_DIMENSION}")]
    Dimension,
    #[error("yuyv needs an even width (two pixels share U and V)")]
    OddWidth,
    #[error("stride {stride} is smaller than a row of {row} bytes")]
    Stride { stride: u32, row: u32 },
    #[error("the frame needs {need} bytes, the buffer holds {have}")]
    TooSmall { need: u64, have: u64 },
    #[error("PNG encoding: {0}")]
    Png(#[from] png::EncodingError),
}

/// Where a frame's pixels are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLayout {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes from one row to the next.
    pub stride: u32,
}

impl FrameLayout {
    /// Checks the geometry; `stride` defaults to a packed row.
    pub fn new(
        format: PixelFormat,
        width: u32,
        height: u32,
        stride: Option<u32>,
    ) -> Result<Self, Error> {
        if !(1..=MAX_DIMENSION).contains(&width) || !(1..=MAX_DIMENSION).contains(&height) {
            return Err(Error::Dimension);
        }
        if format == PixelFormat::Yuyv && width % 2 != 0 {
            return Err(Error::OddWidth);
        }
        let row = width * format.bytes_per_pixel();
        let stride = stride.unwrap_or(row);
        if stride < row {
            return Err(Error::Stride { stride, row });
        }
        Ok(FrameLayout {
            format,
            width,
            height,
            stride,
        })
    }

    /// Bytes of a packed row.
    pub fn row_bytes(&self) -> usize {
        (self.width * self.format.bytes_per_pixel()) as usize
    }

    /// Bytes the frame spans in the buffer.
    pub fn bytes_needed(&self) -> u64 {
        u64::from(self.stride) * u64::from(self.height - 1) + self.row_bytes() as u64
    }

    /// Checks that a buffer of `have` bytes holds the frame.
    pub fn check_fits(&self, have: u64) -> Result<(), Error> {
        let need = self.bytes_needed();
        if need > have {
            return Err(Error::TooSmall { need, have });
        }
        Ok(())
    }
}

fn clamp(value: i32) -> u8 {
    value.clamp(0, 255) as u8
}

/// BT.601 limited-range YCbCr → RGB, integer arithmetic.
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = i32::from(y) - 16;
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    [
        clamp((298 * c + 409 * e + 128) >> 8),
        clamp((298 * c - 100 * d - 208 * e + 128) >> 8),
        clamp((298 * c + 516 * d + 128) >> 8),
    ]
}

/// The PNG pixels of a frame: grey (1 byte per pixel) for `gray`, RGB
/// otherwise, rows packed.
pub fn pixels(layout: &FrameLayout, frame: &[u8]) -> Result<(png::ColorType, Vec<u8>), Error> {
    layout.check_fits(frame.len() as u64)?;
    let width = layout.width as usize;
    let (color, channels) = match layout.format {
        PixelFormat::Gray => (png::ColorType::Grayscale, 1),
        _ => (png::ColorType::Rgb, 3),
    };
    let mut out = Vec::with_capacity(width * layout.height as usize * channels);
    for r in 0..layout.height as usize {
        let start = r * layout.stride as usize;
        let row = &frame[start..start + layout.row_bytes()];
        match layout.format {
            PixelFormat::Gray | PixelFormat::Rgb24 => out.extend_from_slice(row),
            PixelFormat::Xrgb8888 => {
                for px in row.chunks_exact(4) {
                    out.extend_from_slice(&[px[2], px[1], px[0]]);
                }
            }
            PixelFormat::Yuyv => {
                for pair in row.chunks_exact(4) {
                    out.extend_from_slice(&yuv_to_rgb(pair[0], pair[1], pair[3]));
                    out.extend_from_slice(&yuv_to_rgb(pair[2], pair[1], pair[3]));
                }
            }
        }
    }
    Ok((color, out))
}

/// Encodes the frame as PNG into `out`.
pub fn encode_png<W: Write>(layout: &FrameLayout, frame: &[u8], out: W) -> Result<(), Error> {
    let (color, data) = pixels(layout, frame)?;
    let mut encoder = png::Encoder::new(out, layout.width, layout.height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&data)?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png_bytes: &[u8]) -> (png::ColorType, u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut data = vec![0u8; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut data).unwrap();
        data.truncate(info.buffer_size());
        (info.color_type, info.width, info.height, data)
    }

    #[test]
    fn geometry_is_checked() {
        assert!(matches!(
            FrameLayout::new(PixelFormat::Gray, 0, 1, None),
            Err(Error::Dimension)
        ));
        assert!(matches!(
            FrameLayout::new(PixelFormat::Yuyv, 3, 1, None),
            Err(Error::OddWidth)
        ));
        assert!(matches!(
            FrameLayout::new(PixelFormat::Rgb24, 4, 1, Some(11)),
            Err(Error::Stride {
                stride: 11,
                row: 12
            })
        ));
        let layout = FrameLayout::new(PixelFormat::Xrgb8888, 4, 3, Some(20)).unwrap();
        assert_eq!(layout.bytes_needed(), 20 * 2 + 16);
        assert!(layout.check_fits(56).is_ok());
        assert!(matches!(
            layout.check_fits(55),
            Err(Error::TooSmall { need: 56, have: 55 })
        ));
    }

    #[test]
    fn gray_and_rgb24_keep_their_bytes_and_skip_the_stride_padding() {
        let frame: Vec<u8> = (0..=255u8).cycle().take(2 * 8).collect();
        let layout = FrameLayout::new(PixelFormat::Rgb24, 2, 2, Some(8)).unwrap();
        let mut png_bytes = Vec::new();
        encode_png(&layout, &frame, &mut png_bytes).unwrap();
        let (color, w, h, data) = decode(&png_bytes);
        assert_eq!((color, w, h), (png::ColorType::Rgb, 2, 2));
        assert_eq!(data, [&frame[0..6], &frame[8..14]].concat());

        let layout = FrameLayout::new(PixelFormat::Gray, 3, 2, None).unwrap();
        let mut png_bytes = Vec::new();
        encode_png(&layout, &[1, 2, 3, 4, 5, 6, 7], &mut png_bytes).unwrap();
        let (color, _, _, data) = decode(&png_bytes);
        assert_eq!(color, png::ColorType::Grayscale);
        assert_eq!(data, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn xrgb8888_and_yuyv_convert_to_rgb() {
        let layout = FrameLayout::new(PixelFormat::Xrgb8888, 2, 1, None).unwrap();
        let (_, data) = pixels(&layout, &[1, 2, 3, 0xff, 4, 5, 6, 0]).unwrap();
        assert_eq!(data, [3, 2, 1, 6, 5, 4]);

        // Limited range: Y 16 is black, 235 white; U = V = 128 is grey.
        assert_eq!(yuv_to_rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(235, 128, 128), [255, 255, 255]);
        // BT.601 red (R'G'B' 255,0,0): Y 81, U 90, V 240.
        let red = yuv_to_rgb(81, 90, 240);
        assert!(red[0] >= 250 && red[1] <= 5 && red[2] <= 5, "{red:?}");
        let layout = FrameLayout::new(PixelFormat::Yuyv, 2, 1, None).unwrap();
        let (_, data) = pixels(&layout, &[16, 128, 235, 128]).unwrap();
        assert_eq!(data, [0, 0, 0, 255, 255, 255]);
    }
}
