//! Number words by rule: English (`three hundred twenty one`) and French in the traditional
//! spelling (`trois cent vingt et un`, `quatre-vingts`, `deux cents`, `deux cent mille`), for
//! 0 ..= 999 999. The tiny translator's parallel corpus is made from these.

/// Largest number the corpus covers.
pub const MAX: u32 = 999_999;

const EN_ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const EN_TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

fn en_below_1000(n: u32, out: &mut Vec<&'static str>) {
    let (h, r) = (n / 100, n % 100);
    if h > 0 {
        out.push(EN_ONES[h as usize]);
        out.push("hundred");
    }
    if r >= 20 {
        out.push(EN_TENS[(r / 10) as usize]);
        if r % 10 > 0 {
            out.push(EN_ONES[(r % 10) as usize]);
        }
    } else if r > 0 || h == 0 {
        out.push(EN_ONES[r as usize]);
    }
}

/// English words of `n` (no "and", no hyphens): `21` → `twenty one`.
pub fn english(n: u32) -> String {
    let mut out = Vec::new();
    let (th, r) = (n / 1000, n % 1000);
    if th > 0 {
        en_below_1000(th, &mut out);
        out.push("thousand");
        if r > 0 {
            en_below_1000(r, &mut out);
        }
    } else {
        en_below_1000(r, &mut out);
    }
    out.join(" ")
}

const FR_UNITS: [&str; 17] = [
    "zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix", "onze",
    "douze", "treize", "quatorze", "quinze", "seize",
];
const FR_TENS: [&str; 7] = [
    "",
    "dix",
    "vingt",
    "trente",
    "quarante",
    "cinquante",
    "soixante",
];

/// 1 ..= 99. `last`: nothing follows (so `quatre-vingts` takes its `s`).
fn fr_below_100(n: u32, last: bool) -> String {
    match n {
        0..=16 => FR_UNITS[n as usize].to_string(),
        17..=19 => format!("dix-{}", FR_UNITS[(n - 10) as usize]),
        20..=69 => {
            let (t, u) = (FR_TENS[(n / 10) as usize], n % 10);
            match u {
                0 => t.to_string(),
                1 => format!("{t} et un"),
                _ => format!("{t}-{}", FR_UNITS[u as usize]),
            }
        }
        71 => "soixante et onze".to_string(),
        70..=79 => format!("soixante-{}", fr_below_100(n - 60, true)),
        80 if last => "quatre-vingts".to_string(),
        80 => "quatre-vingt".to_string(),
        _ => format!("quatre-vingt-{}", fr_below_100(n - 80, true)),
    }
}

/// 1 ..= 999; `last` as above (before `mille`, `cent` and `vingt` stay invariable).
fn fr_below_1000(n: u32, last: bool) -> String {
    let (h, r) = (n / 100, n % 100);
    let mut s = match h {
        0 => String::new(),
        1 => "cent".to_string(),
        _ if r == 0 && last => format!("{} cents", FR_UNITS[h as usize]),
        _ => format!("{} cent", FR_UNITS[h as usize]),
    };
    if r > 0 {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(&fr_below_100(r, last));
    }
    s
}

/// French words of `n`: `321` → `trois cent vingt et un`.
pub fn french(n: u32) -> String {
    if n == 0 {
        return FR_UNITS[0].to_string();
    }
    let (th, r) = (n / 1000, n % 1000);
    let mut s = match th {
        0 => String::new(),
        1 => "mille".to_string(),
        _ => format!("{} mille", fr_below_1000(th, false)),
    };
    if r > 0 {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(&fr_below_1000(r, true));
    }
    s
}

/// Whether `n` is held out of training (about 1 number in 20, chosen by a fixed hash).
pub fn held_out(n: u32) -> bool {
    let mut z = u64::from(n).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % 20 == 0
}

/// A number whose digit count is uniform in 1..=6 (so short phrases are as common as long
/// ones), from a uniform `u64`.
pub fn sample(r1: u64, r2: u64) -> u32 {
    let digits = (r1 % 6) as u32 + 1;
    let lo = if digits == 1 {
        0
    } else {
        10u32.pow(digits - 1)
    };
    let hi = 10u32.pow(digits);
    lo + (r2 % u64::from(hi - lo)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_words() {
        assert_eq!(english(0), "zero");
        assert_eq!(english(321), "three hundred twenty one");
        assert_eq!(english(1000), "one thousand");
        assert_eq!(english(40_017), "forty thousand seventeen");
        assert_eq!(
            english(999_999),
            "nine hundred ninety nine thousand nine hundred ninety nine"
        );
    }

    #[test]
    fn french_words_follow_the_traditional_rules() {
        for (n, fr) in [
            (0, "zéro"),
            (1, "un"),
            (17, "dix-sept"),
            (21, "vingt et un"),
            (22, "vingt-deux"),
            (71, "soixante et onze"),
            (77, "soixante-dix-sept"),
            (80, "quatre-vingts"),
            (81, "quatre-vingt-un"),
            (91, "quatre-vingt-onze"),
            (100, "cent"),
            (200, "deux cents"),
            (201, "deux cent un"),
            (280, "deux cent quatre-vingts"),
            (321, "trois cent vingt et un"),
            (1000, "mille"),
            (1001, "mille un"),
            (21_000, "vingt et un mille"),
            (80_000, "quatre-vingt mille"),
            (200_000, "deux cent mille"),
            (200_200, "deux cent mille deux cents"),
            (
                797_797,
                "sept cent quatre-vingt-dix-sept mille sept cent quatre-vingt-dix-sept",
            ),
        ] {
            assert_eq!(french(n), fr, "{n}");
        }
    }

    #[test]
    fn samples_cover_all_lengths_and_some_are_held_out() {
        let held = (0..10_000).filter(|&n| held_out(n)).count();
        assert!((300..700).contains(&held), "{held}");
        assert!(sample(0, 7) < 10);
        assert!((100_000..=MAX).contains(&sample(5, u64::MAX)));
    }
}
