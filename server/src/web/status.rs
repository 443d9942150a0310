//! How times look on pages: durations and ages. What a build means (its colour, glyph and
//! word) is `results::verdict`.

/// A duration such as `1h 02m`, `3m 07s` or `12s`.
pub fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// An age such as `3h 12m`, `2d 4h` or `45s`.
pub fn age(d: chrono::TimeDelta) -> String {
    let secs = d.num_seconds().max(0);
    // Minutes at the finest, so a page (and its ETag) stays the same for a while.
    match secs {
        0..60 => "<1m".to_owned(),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d {}h", secs / 86400, (secs % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(3725), "1h 02m");
        assert_eq!(duration(187), "3m 07s");
    }
}
