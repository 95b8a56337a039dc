//! The built-in media provider: real files made on the spot from the
//! prompt, the same prompt always giving the same bytes. Images are PNGs
//! (the `png` crate) of bands and rings in colours taken from the prompt's
//! SHA-256; narration is a 16-bit mono WAV of a few seconds of tones whose
//! pitches come from the text.

use futures::future::BoxFuture;
use sha2::{Digest as _, Sha256};

use super::{Generated, ImageAsk, MediaProvider, SpeechAsk};
use crate::providers::ProviderError;

/// Largest side of a built-in image (a request for more gets this).
pub const MAX_SIDE: u32 = 512;
/// Sample rate of built-in narration.
pub const SAMPLE_RATE: u32 = 22_050;

/// The built-in provider.
#[derive(Debug, Clone, Default)]
pub struct Builtin;

impl MediaProvider for Builtin {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn models(&self) -> [&str; 2] {
        ["builtin", "builtin"]
    }

    fn image<'a>(&'a self, ask: ImageAsk<'a>) -> BoxFuture<'a, Result<Generated, ProviderError>> {
        Box::pin(async move {
            let (width, height) = side(ask.size);
            Ok(Generated {
                bytes: picture(ask.prompt, width, height)?,
                content_type: "image/png".into(),
                model: "builtin".into(),
            })
        })
    }

    fn speech<'a>(&'a self, ask: SpeechAsk<'a>) -> BoxFuture<'a, Result<Generated, ProviderError>> {
        Box::pin(async move {
            Ok(Generated {
                bytes: tones(&format!("{}\0{}", ask.voice, ask.text)),
                content_type: "audio/wav".into(),
                model: "builtin".into(),
            })
        })
    }
}

/// `WIDTHxHEIGHT`, each side 16 to [`MAX_SIDE`] (default 256 square).
fn side(size: &str) -> (u32, u32) {
    let parse = |s: &str| s.trim().parse::<u32>().ok().map(|n| n.clamp(16, MAX_SIDE));
    match size.split_once('x') {
        Some((w, h)) => (parse(w).unwrap_or(256), parse(h).unwrap_or(256)),
        None => (256, 256),
    }
}

/// A PNG of `width` x `height` drawn from `prompt`.
pub fn picture(prompt: &str, width: u32, height: u32) -> Result<Vec<u8>, ProviderError> {
    let seed = Sha256::digest(prompt.as_bytes());
    let palette: Vec<[u8; 3]> = seed
        .chunks(3)
        .take(8)
        .map(|c| [c[0], c[1], c[2 % c.len()]])
        .collect();
    let (cx, cy) = (
        f64::from(seed[24]) / 255.0 * f64::from(width),
        f64::from(seed[25]) / 255.0 * f64::from(height),
    );
    let ring = 6.0 + f64::from(seed[26] % 24);
    let band = 1 + u32::from(seed[27] % 16);
    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let d = ((f64::from(x) - cx).powi(2) + (f64::from(y) - cy).powi(2)).sqrt();
            let i = ((d / ring) as usize + ((x + y) / band) as usize) % palette.len();
            pixels.extend_from_slice(&palette[i]);
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let failed = |e: png::EncodingError| ProviderError::Fatal {
        reason: format!("the built-in image could not be encoded: {e}"),
    };
    let mut writer = encoder.write_header().map_err(failed)?;
    writer.write_image_data(&pixels).map_err(failed)?;
    writer.finish().map_err(failed)?;
    Ok(out)
}

/// A WAV of tones, one per word of `text` (at most 24, a quarter second
/// each, at least two seconds in all).
pub fn tones(text: &str) -> Vec<u8> {
    let words: Vec<&str> = text.split_whitespace().take(24).collect();
    let notes = words.len().max(8);
    let per_note = SAMPLE_RATE.div_ceil(4) as usize;
    let mut samples: Vec<i16> = Vec::with_capacity(notes * per_note);
    for n in 0..notes {
        let word = words.get(n).copied().unwrap_or("");
        let h = Sha256::digest(format!("{n}\0{word}").as_bytes());
        let freq = 220.0 + f64::from(u16::from_be_bytes([h[0], h[1]]) % 660);
        for i in 0..per_note {
            let t = i as f64 / f64::from(SAMPLE_RATE);
            // A short fade in and out, so notes do not click.
            let edge = (i.min(per_note - i) as f64 / 400.0).min(1.0);
            let v = (2.0 * std::f64::consts::PI * freq * t).sin() * edge * 0.3;
            samples.push((v * f64::from(i16::MAX)) as i16);
        }
    }
    wav(&samples)
}

/// A RIFF/WAVE file of 16-bit mono PCM `samples` at [`SAMPLE_RATE`].
fn wav(samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&(SAMPLE_RATE * 2).to_le_bytes()); // bytes per second
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn pictures_are_real_pngs_and_the_same_for_the_same_prompt() {
        let a = picture("a ruined keep at dusk", 64, 48).unwrap();
        assert!(infer::image::is_png(&a));
        assert_eq!(a, picture("a ruined keep at dusk", 64, 48).unwrap());
        assert_ne!(a, picture("a dragon", 64, 48).unwrap());
        let decoder = png::Decoder::new(std::io::Cursor::new(&a));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (64, 48));
        assert_eq!(side("2000x3"), (MAX_SIDE, 16));
        assert_eq!(side("huge"), (256, 256));
    }

    #[test]
    fn tones_are_a_real_wav_of_at_least_two_seconds() {
        let w = tones("The wind howls through the broken gate");
        assert!(infer::audio::is_wav(&w));
        let data = u32::from_le_bytes([w[40], w[41], w[42], w[43]]) as usize;
        assert_eq!(data + 44, w.len());
        assert!(data / 2 >= 2 * SAMPLE_RATE as usize);
        assert_eq!(w, tones("The wind howls through the broken gate"));
    }
}
