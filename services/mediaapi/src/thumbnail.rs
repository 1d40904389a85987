//! Thumbnails: images made smaller, never larger (pure and blocking: run
//! it off the async runtime). `crop` fills the requested box exactly,
//! `scale` fits inside it keeping the aspect. Images past the pixel limit
//! are refused before they are decoded, and decoders are held to a memory
//! bound, so a small file that claims to be huge (a decompression bomb)
//! costs nothing. PNG, JPEG, GIF and WebP are read; a JPEG gives a JPEG,
//! an animated GIF asked for animated gives an animated GIF, anything else
//! a PNG.

use std::io::Cursor;

use image::codecs::gif::{GifDecoder, GifEncoder, Repeat};
use image::{DynamicImage, ImageFormat, ImageReader, Limits};

/// How a thumbnail meets its box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Method {
    Crop,
    Scale,
}

impl Method {
    pub(crate) fn parse(method: &str) -> Option<Method> {
        match method {
            "crop" => Some(Method::Crop),
            "scale" => Some(Method::Scale),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Scale => "scale",
        }
    }
}

/// A thumbnail's box and method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Size {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) method: Method,
}

/// A thumbnail made.
#[derive(Debug)]
pub(crate) struct Thumbnail {
    pub(crate) bytes: Vec<u8>,
    pub(crate) content_type: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ThumbnailError {
    /// More pixels than the limit (or more frames' worth).
    #[error("the image is too large to thumbnail")]
    TooLarge,
    /// Not an image this server reads.
    #[error("not an image that can be thumbnailed")]
    Unsupported,
    /// It claimed to be one, but could not be read.
    #[error("the image could not be read: {0}")]
    Broken(String),
}

/// The formats thumbnails are made of, by the type their bytes show.
pub(crate) fn can_thumbnail(sniffed: Option<&str>) -> bool {
    matches!(
        sniffed,
        Some("image/png" | "image/jpeg" | "image/gif" | "image/webp")
    )
}

/// An image's width and height, read from its first bytes (the header of
/// the formats thumbnails are made of), if they tell.
pub(crate) fn dimensions(head: &[u8]) -> Option<(u32, u32)> {
    image::ImageReader::new(std::io::Cursor::new(head))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

/// The size of a thumbnail of a `width`×`height` image in `size`: `None`
/// when the image is no larger than the box (it is its own thumbnail).
fn target(width: u32, height: u32, size: Size) -> Option<(u32, u32)> {
    if width <= size.width && height <= size.height {
        return None;
    }
    let (w, h) = (u64::from(width), u64::from(height));
    let (bw, bh) = (u64::from(size.width.max(1)), u64::from(size.height.max(1)));
    Some(match size.method {
        // The largest size with the image's aspect that fits in the box.
        Method::Scale => {
            if w * bh > h * bw {
                (bw as u32, ((h * bw) / w).max(1) as u32)
            } else {
                (((w * bh) / h).max(1) as u32, bh as u32)
            }
        }
        // The box itself, as far as the image reaches (never upscaled).
        Method::Crop => (size.width.min(width), size.height.min(height)),
    })
}

/// Makes a thumbnail of `bytes` in `size`: `Ok(None)` when the image is
/// no larger than the box (serve the original). `max_pixels` bounds the
/// image (and an animation's frames together).
pub(crate) fn make(
    bytes: &[u8],
    size: Size,
    animated: bool,
    max_pixels: u64,
) -> Result<Option<Thumbnail>, ThumbnailError> {
    let format = image::guess_format(bytes).map_err(|_| ThumbnailError::Unsupported)?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP
    ) {
        return Err(ThumbnailError::Unsupported);
    }
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| ThumbnailError::Broken(e.to_string()))?;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ThumbnailError::TooLarge);
    }
    let Some((tw, th)) = target(width, height, size) else {
        return Ok(None);
    };
    let limits = || {
        let mut limits = Limits::default();
        limits.max_image_width = Some(width);
        limits.max_image_height = Some(height);
        // RGBA at 16 bits per channel, twice over, is the most a decoder
        // of an image within the pixel limit needs.
        limits.max_alloc = Some(max_pixels.saturating_mul(16));
        limits
    };
    if animated && let Some(frames) = frames_of(bytes, format, limits())? {
        return animated_gif(frames, size, (tw, th), max_pixels).map(Some);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits());
    let image = reader
        .decode()
        .map_err(|e| ThumbnailError::Broken(e.to_string()))?;
    let small = resize(&image, size.method, tw, th);
    let mut out = Cursor::new(Vec::new());
    let content_type = if format == ImageFormat::Jpeg {
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
        small
            .to_rgb8()
            .write_with_encoder(encoder)
            .map_err(|e| ThumbnailError::Broken(e.to_string()))?;
        "image/jpeg"
    } else {
        small
            .write_to(&mut out, ImageFormat::Png)
            .map_err(|e| ThumbnailError::Broken(e.to_string()))?;
        "image/png"
    };
    Ok(Some(Thumbnail {
        bytes: out.into_inner(),
        content_type,
    }))
}

/// `image` made `tw`×`th` by `method`.
fn resize(image: &DynamicImage, method: Method, tw: u32, th: u32) -> DynamicImage {
    match method {
        Method::Scale => image.thumbnail_exact(tw, th),
        Method::Crop => {
            // Scale to cover the box, then cut the middle out.
            let (w, h) = (u64::from(image.width()), u64::from(image.height()));
            let (cw, ch) = if w * u64::from(th) > h * u64::from(tw) {
                (((w * u64::from(th)) / h).max(u64::from(tw)) as u32, th)
            } else {
                (tw, ((h * u64::from(tw)) / w).max(u64::from(th)) as u32)
            };
            let covered = image.thumbnail_exact(cw, ch);
            covered.crop_imm((cw - tw) / 2, (ch - th) / 2, tw, th)
        }
    }
}

/// The frames of an animated image (a GIF, or a WebP that is animated),
/// with the size of each; `None` for a still one.
fn frames_of(
    bytes: &[u8],
    format: ImageFormat,
    limits: Limits,
) -> Result<Option<(image::Frames<'_>, u64)>, ThumbnailError> {
    use image::{AnimationDecoder, ImageDecoder};
    let broken = |e: image::ImageError| ThumbnailError::Broken(e.to_string());
    Ok(match format {
        ImageFormat::Gif => {
            let mut decoder = GifDecoder::new(Cursor::new(bytes)).map_err(broken)?;
            decoder.set_limits(limits).map_err(broken)?;
            let (width, height) = decoder.dimensions();
            Some((decoder.into_frames(), u64::from(width) * u64::from(height)))
        }
        ImageFormat::WebP => {
            let mut decoder =
                image::codecs::webp::WebPDecoder::new(Cursor::new(bytes)).map_err(broken)?;
            if !decoder.has_animation() {
                return Ok(None);
            }
            decoder.set_limits(limits).map_err(broken)?;
            let (width, height) = decoder.dimensions();
            Some((decoder.into_frames(), u64::from(width) * u64::from(height)))
        }
        _ => None,
    })
}

/// An animation's frames made smaller, as an animated GIF (the animated
/// format this build writes).
fn animated_gif(
    (frames, frame_pixels): (image::Frames<'_>, u64),
    size: Size,
    (tw, th): (u32, u32),
    max_pixels: u64,
) -> Result<Thumbnail, ThumbnailError> {
    let broken = |e: image::ImageError| ThumbnailError::Broken(e.to_string());
    let mut out = Cursor::new(Vec::new());
    {
        // Speed 10 of 30: quantising each frame's colours at the slowest
        // setting costs seconds for little gain in a thumbnail.
        let mut encoder = GifEncoder::new_with_speed(&mut out, 10);
        encoder.set_repeat(Repeat::Infinite).map_err(broken)?;
        let mut decoded_pixels = 0_u64;
        for frame in frames {
            let frame = frame.map_err(broken)?;
            decoded_pixels += frame_pixels;
            // Every frame is a whole canvas: the frames together are held
            // to the same bound as one image.
            if decoded_pixels > max_pixels.saturating_mul(4) {
                return Err(ThumbnailError::TooLarge);
            }
            let delay = frame.delay();
            let small = resize(
                &DynamicImage::ImageRgba8(frame.into_buffer()),
                size.method,
                tw,
                th,
            );
            encoder
                .encode_frame(image::Frame::from_parts(small.to_rgba8(), 0, 0, delay))
                .map_err(broken)?;
        }
    }
    Ok(Thumbnail {
        bytes: out.into_inner(),
        content_type: "image/gif",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::AnimationDecoder;

    fn encoded(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        if format == ImageFormat::Gif {
            let mut encoder = GifEncoder::new_with_speed(&mut out, 30);
            encoder
                .encode_frame(image::Frame::new(image.to_rgba8()))
                .expect("gif");
        } else {
            image.write_to(&mut out, format).expect("encode");
        }
        out.into_inner()
    }

    fn picture(width: u32, height: u32) -> DynamicImage {
        DynamicImage::ImageRgba8(image::RgbaImage::from_fn(width, height, |x, y| {
            image::Rgba([(x % 256) as u8, (y % 256) as u8, 128, 255])
        }))
    }

    fn dimensions(bytes: &[u8]) -> (u32, u32) {
        image::load_from_memory(bytes)
            .expect("a thumbnail")
            .into_rgba8()
            .dimensions()
    }

    const SCALE: Size = Size {
        width: 320,
        height: 240,
        method: Method::Scale,
    };
    const CROP: Size = Size {
        width: 96,
        height: 96,
        method: Method::Crop,
    };

    #[test]
    fn every_format_is_made_smaller_by_both_methods() {
        let original = picture(1000, 500);
        for (format, content_type) in [
            (ImageFormat::Png, "image/png"),
            (ImageFormat::Jpeg, "image/jpeg"),
            (ImageFormat::Gif, "image/png"),
            (ImageFormat::WebP, "image/png"),
        ] {
            let image = if format == ImageFormat::Jpeg {
                DynamicImage::ImageRgb8(original.to_rgb8())
            } else {
                original.clone()
            };
            let bytes = encoded(&image, format);
            let scaled = make(&bytes, SCALE, false, 50_000_000)
                .expect("scale")
                .expect("smaller");
            assert_eq!(scaled.content_type, content_type, "{format:?}");
            // 1000×500 into 320×240: as wide as the box, its aspect kept.
            assert_eq!(dimensions(&scaled.bytes), (320, 160), "{format:?}");
            let cropped = make(&bytes, CROP, false, 50_000_000)
                .expect("crop")
                .expect("smaller");
            assert_eq!(dimensions(&cropped.bytes), (96, 96), "{format:?}");
        }
    }

    #[test]
    fn an_image_within_the_box_is_its_own_thumbnail() {
        let bytes = encoded(&picture(200, 100), ImageFormat::Png);
        assert!(
            make(&bytes, SCALE, false, 50_000_000)
                .expect("scale")
                .is_none()
        );
        // Larger than a crop box in one direction: cut, never enlarged.
        let cropped = make(
            &bytes,
            Size {
                width: 150,
                height: 150,
                method: Method::Crop,
            },
            false,
            50_000_000,
        )
        .expect("crop")
        .expect("smaller");
        assert_eq!(dimensions(&cropped.bytes), (150, 100));
    }

    #[test]
    fn animated_gifs_stay_animated_when_asked() {
        let frames: Vec<image::Frame> = (0..3)
            .map(|i| {
                let buffer = image::RgbaImage::from_fn(400, 300, |x, _| {
                    image::Rgba([((x + i * 50) % 256) as u8, 0, 0, 255])
                });
                image::Frame::from_parts(buffer, 0, 0, image::Delay::from_numer_denom_ms(100, 1))
            })
            .collect();
        let mut bytes = Cursor::new(Vec::new());
        {
            let mut encoder = GifEncoder::new_with_speed(&mut bytes, 30);
            encoder.encode_frames(frames).expect("gif");
        }
        let bytes = bytes.into_inner();
        let animated = make(&bytes, SCALE, true, 50_000_000)
            .expect("animated")
            .expect("smaller");
        assert_eq!(animated.content_type, "image/gif");
        let decoder = GifDecoder::new(Cursor::new(&animated.bytes)).expect("a gif");
        let frames = decoder.into_frames().collect_frames().expect("frames");
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].buffer().dimensions(), (320, 240));
        // Not asked: a still image.
        let still = make(&bytes, SCALE, false, 50_000_000)
            .expect("still")
            .expect("smaller");
        assert_eq!(still.content_type, "image/png");
    }

    /// An animated WebP (made by another encoder: Pillow's) stays animated
    /// when asked, as a GIF; a still WebP asked animated is still.
    #[test]
    fn animated_webps_stay_animated_when_asked() {
        let bytes = include_bytes!("fixtures/animated.webp");
        let small = Size {
            width: 32,
            height: 24,
            method: Method::Scale,
        };
        let animated = make(bytes, small, true, 50_000_000)
            .expect("animated")
            .expect("smaller");
        assert_eq!(animated.content_type, "image/gif");
        let decoder = GifDecoder::new(Cursor::new(&animated.bytes)).expect("a gif");
        let frames = decoder.into_frames().collect_frames().expect("frames");
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].buffer().dimensions(), (32, 24));
        let still = make(bytes, small, false, 50_000_000)
            .expect("still")
            .expect("smaller");
        assert_eq!(still.content_type, "image/png");
        let webp = encoded(&picture(64, 48), ImageFormat::WebP);
        let still = make(&webp, small, true, 50_000_000)
            .expect("still")
            .expect("smaller");
        assert_eq!(still.content_type, "image/png");
        // Frames past the pixel bound together are refused.
        assert!(matches!(
            make(bytes, small, true, 64 * 48 / 2),
            Err(ThumbnailError::TooLarge)
        ));
    }

    #[test]
    fn images_past_the_pixel_limit_are_refused_before_decoding() {
        // A PNG that claims 30 000×30 000 pixels in a few hundred bytes.
        let bytes = encoded(&picture(30_000, 1), ImageFormat::Png);
        let mut bomb = bytes.clone();
        // The IHDR height is bytes 20..24, its checksum 29..33.
        bomb[20..24].copy_from_slice(&30_000_u32.to_be_bytes());
        let crc = crc32fast::hash(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            make(&bomb, SCALE, false, 50_000_000),
            Err(ThumbnailError::TooLarge)
        ));
        assert!(matches!(
            make(b"<svg/>", SCALE, false, 50_000_000),
            Err(ThumbnailError::Unsupported)
        ));
        let mut truncated = encoded(&picture(500, 500), ImageFormat::Png);
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(
            make(&truncated, SCALE, false, 50_000_000),
            Err(ThumbnailError::Broken(_))
        ));
    }
}
