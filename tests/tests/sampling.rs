//! The sampler against the distributions it should draw from: over 10^5 draws
//! the observed frequencies must fit the truncated, renormalised target
//! (chi-square at p = 0.001), for each truncation alone and together.
//! The targets are computed here independently, in f64.

use ember_core::sampling::{Candidate, Sampler, SamplerConfig};

const DRAWS: usize = 100_000;

fn logits() -> Vec<f32> {
    (0..24)
        .map(|i| (2.0 * (i as f64 * 1.7).sin() + 0.05 * i as f64) as f32)
        .collect()
}

/// The distribution the chain defines, by its definition.
fn target(l: &[f32], cfg: &SamplerConfig) -> Vec<f64> {
    let mut order: Vec<usize> = (0..l.len()).collect();
    order.sort_by(|&a, &b| l[b].partial_cmp(&l[a]).unwrap().then(a.cmp(&b)));
    if cfg.top_k > 0 {
        order.truncate(cfg.top_k as usize);
    }
    let probs = |set: &[usize], t: f64| -> Vec<f64> {
        let e: Vec<f64> = set.iter().map(|&i| (l[i] as f64 / t).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    };
    if cfg.top_p < 1.0 {
        let p = probs(&order, 1.0);
        let mut acc = 0.0;
        let mut keep = order.len();
        for (i, q) in p.iter().enumerate() {
            acc += q;
            if acc >= cfg.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        order.truncate(keep);
    }
    if cfg.min_p > 0.0 {
        let p = probs(&order, 1.0);
        let floor = p[0] * cfg.min_p as f64;
        order = order
            .into_iter()
            .zip(p)
            .filter(|&(_, q)| q >= floor)
            .map(|(i, _)| i)
            .collect();
    }
    let p = probs(&order, cfg.temperature as f64);
    let mut out = vec![0.0; l.len()];
    for (i, q) in order.into_iter().zip(p) {
        out[i] = q;
    }
    out
}

/// Wilson–Hilferty approximation of the chi-square quantile at 1 - 0.001.
fn chi2_critical(df: usize) -> f64 {
    let z = 3.090_232; // standard normal quantile at 0.999
    let k = df as f64;
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

fn check(cfg: SamplerConfig) {
    let l = logits();
    let want = target(&l, &cfg);
    let mut s = Sampler::new(cfg).unwrap();
    let mut scratch = vec![Candidate::default(); Sampler::scratch_len(l.len())];
    let mut seen = vec![0usize; l.len()];
    for _ in 0..DRAWS {
        seen[s.sample(&l, &mut scratch).unwrap() as usize] += 1;
    }
    let mut chi2 = 0.0;
    let mut bins = 0;
    for (i, (&o, &p)) in seen.iter().zip(&want).enumerate() {
        if p == 0.0 {
            assert_eq!(o, 0, "token {i} is outside the target's support: {cfg:?}");
            continue;
        }
        let e = p * DRAWS as f64;
        assert!(e >= 5.0, "test design: expected count {e} too small");
        chi2 += (o as f64 - e).powi(2) / e;
        bins += 1;
    }
    assert!(bins >= 2, "test design: {bins} bins");
    let crit = chi2_critical(bins - 1);
    assert!(
        chi2 < crit,
        "chi2 {chi2:.1} >= {crit:.1} with {} bins: {cfg:?}",
        bins
    );
}

fn plain(seed: u64) -> SamplerConfig {
    SamplerConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed,
        ..SamplerConfig::default()
    }
}

#[test]
fn temperature_alone() {
    check(SamplerConfig {
        temperature: 0.7,
        ..plain(1)
    });
    check(SamplerConfig {
        temperature: 1.6,
        ..plain(2)
    });
}

#[test]
fn top_k_alone() {
    check(SamplerConfig {
        top_k: 5,
        ..plain(3)
    });
}

#[test]
fn top_p_alone() {
    check(SamplerConfig {
        top_p: 0.8,
        ..plain(4)
    });
}

#[test]
fn min_p_alone() {
    check(SamplerConfig {
        min_p: 0.1,
        ..plain(5)
    });
}

#[test]
fn everything_together() {
    check(SamplerConfig {
        temperature: 1.3,
        top_k: 12,
        top_p: 0.9,
        min_p: 0.05,
        ..plain(6)
    });
    check(SamplerConfig {
        seed: 7,
        ..SamplerConfig::default()
    });
}

#[test]
fn top_p_keeps_the_smallest_prefix_reaching_p() {
    // Probabilities 0.5, 0.25, 0.125, 0.125 exactly (powers of two).
    let l: Vec<f32> = [0.5f32, 0.25, 0.125, 0.125]
        .iter()
        .map(|p| p.ln())
        .collect();
    let support = |p: f32| {
        let mut s = Sampler::new(SamplerConfig {
            top_p: p,
            ..plain(8)
        })
        .unwrap();
        let mut scratch = vec![Candidate::default(); 4];
        let mut seen = [false; 4];
        for _ in 0..2000 {
            seen[s.sample(&l, &mut scratch).unwrap() as usize] = true;
        }
        seen.iter().filter(|&&x| x).count()
    };
    assert_eq!(support(0.5), 1);
    assert_eq!(support(0.51), 2);
    assert_eq!(support(0.75), 2);
    assert_eq!(support(0.76), 3);
    assert_eq!(support(1.0), 4);
}

/// 1,000 logits in a seeded scrambled order.
fn scrambled_logits(seed: u64) -> Vec<f32> {
    (0..1000)
        .map(|i| (((i as u64 * 2_654_435_761) ^ (seed * 97)) % 1000) as f32 / 37.0)
        .collect()
}

#[test]
fn top_k_1_is_greedy() {
    let mut scratch = vec![Candidate::default(); 1000];
    for seed in 0..50u64 {
        let l = scrambled_logits(seed);
        let mut g = Sampler::new(SamplerConfig::greedy()).unwrap();
        let mut k1 = Sampler::new(SamplerConfig {
            top_k: 1,
            seed,
            ..plain(seed)
        })
        .unwrap();
        assert_eq!(k1.sample(&l, &mut scratch), g.sample(&l, &mut scratch));
    }
}

/// As llama.cpp's sampler tests expect: top-p 0 keeps the single most
/// likely token, and so does a min-p above 1 (which no token meets), so
/// either is greedy whatever the temperature and seed.
#[test]
fn top_p_0_and_min_p_above_1_are_greedy() {
    let mut scratch = vec![Candidate::default(); 1000];
    for seed in 0..50u64 {
        let l = scrambled_logits(seed);
        let mut g = Sampler::new(SamplerConfig::greedy()).unwrap();
        let want = g.sample(&l, &mut scratch).unwrap();
        for cfg in [
            SamplerConfig {
                top_p: 0.0,
                ..plain(seed)
            },
            SamplerConfig {
                min_p: 1.5,
                ..plain(seed)
            },
            SamplerConfig {
                min_p: 7.0,
                top_k: 40,
                ..plain(seed)
            },
        ] {
            let mut s = Sampler::new(cfg).unwrap();
            assert_eq!(s.sample(&l, &mut scratch).unwrap(), want, "{cfg:?}");
        }
    }
}

#[test]
fn nan_and_infinities_are_handled() {
    let mut scratch = vec![Candidate::default(); 6];
    let l = [f32::NAN, 1.0, f32::NEG_INFINITY, 2.0, f32::NAN, 0.5];
    for cfg in [plain(9), SamplerConfig::default(), SamplerConfig::greedy()] {
        let mut s = Sampler::new(cfg).unwrap();
        for _ in 0..500 {
            let id = s.sample(&l, &mut scratch).unwrap();
            assert!(matches!(id, 1 | 3 | 5), "{id}");
        }
    }
    let huge = [f32::MAX, -f32::MAX, f32::MAX, 0.0, f32::MIN_POSITIVE, 1e30];
    let mut s = Sampler::new(plain(10)).unwrap();
    for _ in 0..500 {
        let id = s.sample(&huge, &mut scratch).unwrap();
        assert!(id == 0 || id == 2, "{id}");
    }
}

#[test]
fn the_same_seed_gives_the_same_stream() {
    let l = logits();
    let draw = |seed| {
        let mut s = Sampler::new(plain(seed)).unwrap();
        let mut scratch = vec![Candidate::default(); l.len()];
        (0..64)
            .map(|_| s.sample(&l, &mut scratch).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(11), draw(11));
    assert_ne!(draw(11), draw(12));
}
