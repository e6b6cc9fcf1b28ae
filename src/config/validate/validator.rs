//! The validator's state and the checks of single values (addresses,
//! durations, integers, sizes, names) that every section uses.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use crate::config::error::Problem;
use crate::config::raw::*;

/// The longest duration a config may give: `"10years"`, of 365.25 days
/// as humantime counts them.
const MAX_DURATION: Duration = Duration::from_secs(10 * 31_557_600);

pub struct Validator<'a> {
    pub problems: &'a mut Vec<Problem>,
    /// What is allowed but risky: said by `corral check` and logged on
    /// every load, never a reason to refuse the file.
    pub warnings: Vec<Problem>,
    /// The config file's folder; relative file paths resolve against it.
    pub base: PathBuf,
    /// What parsing already reported and left out: a check that would only
    /// repeat it in other words (a list now empty, a default now in force)
    /// stays quiet.
    pub dropped: Dropped,
}

impl<'a> Validator<'a> {
    pub fn new(path: &Path, problems: &'a mut Vec<Problem>, dropped: Dropped) -> Self {
        Self {
            problems,
            warnings: Vec::new(),
            base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            dropped,
        }
    }

    pub fn problem(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems.push(Problem::new(span, message));
    }

    pub fn warning(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.warnings.push(Problem::new(span, message));
    }

    /// How many problems are recorded: compared before and after a check,
    /// it tells whether that check found its value at fault.
    pub fn reported(&self) -> usize {
        self.problems.len()
    }

    pub fn socket_addr(&mut self, raw: &Text, key: &str) -> Option<SocketAddr> {
        match raw.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(raw.span(), format!("{key}: `{}` is not an address, expected IP:PORT such as 127.0.0.1:8080 or [::1]:8080", raw.get_ref()));
                None
            }
        }
    }

    /// A duration that must be greater than zero; `default` when absent or invalid.
    pub fn timeout(&mut self, raw: Option<&Text>, key: &str, default: Duration) -> Duration {
        match self.duration_allow_zero(raw, key) {
            Some(d) if d.is_zero() => {
                if let Some(raw) = raw {
                    self.problem(raw.span(), format!("{key}: must be greater than zero"));
                }
                default
            }
            Some(d) => d,
            None => default,
        }
    }

    /// A duration of at least `min`; `default` when absent or invalid.
    pub fn timeout_at_least(
        &mut self,
        raw: Option<&Text>,
        key: &str,
        min: Duration,
        default: Duration,
    ) -> Duration {
        match self.duration_allow_zero(raw, key) {
            Some(d) if d < min => {
                if let Some(raw) = raw {
                    let min = humantime::format_duration(min);
                    self.problem(
                        raw.span(),
                        format!(
                            "{key}: `{}` is too short, expected at least {min}",
                            raw.get_ref()
                        ),
                    );
                }
                default
            }
            Some(d) => d,
            None => default,
        }
    }

    /// A duration, at most [`MAX_DURATION`]: whatever corral waits for is
    /// added to clocks and doubled, which a hundred-year figure overflows.
    pub fn duration_allow_zero(&mut self, raw: Option<&Text>, key: &str) -> Option<Duration> {
        let raw = raw?;
        match humantime::parse_duration(raw.get_ref()) {
            Ok(d) if d > MAX_DURATION => {
                self.problem(
                    raw.span(),
                    format!(
                        "{key}: `{}` is too long, expected at most 10 years",
                        raw.get_ref()
                    ),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(raw.span(), format!("{key}: `{}` is not a duration ({e}), expected e.g. \"150ms\", \"2s\" or \"1m\"", raw.get_ref()));
                None
            }
        }
    }

    pub fn int_in(&mut self, raw: &Int, min: i64, max: i64, key: &str) -> Option<i64> {
        let n = *raw.get_ref();
        if (min..=max).contains(&n) {
            Some(n)
        } else {
            self.problem(
                raw.span(),
                format!("{key}: {n} is out of range, expected {min} to {max}"),
            );
            None
        }
    }

    /// HTTP statuses (100 to 599), sorted and without repeats; the ones out
    /// of range are reported and left out.
    pub fn statuses(&mut self, raw: &Spanned<Vec<Int>>, key: &str) -> Vec<u16> {
        let mut out: Vec<u16> = raw
            .get_ref()
            .iter()
            .filter_map(|n| self.int_in(n, 100, 599, key))
            .filter_map(|n| u16::try_from(n).ok())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Networks written as CIDRs (`10.0.0.0/8`, `fd00::/8`) or single
    /// addresses; the unreadable ones are reported and left out.
    pub fn networks(&mut self, raw: &Spanned<Vec<Text>>, key: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for text in raw.get_ref() {
            let t = text.get_ref().trim();
            match t.parse::<IpNet>().or_else(|_| t.parse::<IpAddr>().map(IpNet::from)) {
                // `10.1.2.3/8` means `10.0.0.0/8`: the host bits say nothing.
                Ok(net) => out.push(net.trunc()),
                Err(_) => self.problem(
                    text.span(),
                    format!("{key}: `{t}` is not a network, expected a CIDR such as \"10.0.0.0/8\" or \"fd00::/8\", or an address"),
                ),
            }
        }
        out
    }

    /// A byte size written as a number of bytes or a string like "10 MiB".
    pub fn size(
        &mut self,
        raw: &Spanned<IntOrString>,
        min: u64,
        max: u64,
        key: &str,
    ) -> Option<u64> {
        let n = match raw.get_ref() {
            IntOrString::Int(n) => u64::try_from(*n).ok(),
            IntOrString::Str(s) => s.parse::<bytesize::ByteSize>().ok().map(|b| b.as_u64()),
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.problem(
                    raw.span(),
                    format!("{key}: {n} bytes is out of range, expected {min} to {max}"),
                );
                None
            }
            None => {
                self.problem(raw.span(), format!("{key}: not a size, expected bytes as a number or a string such as \"10 MiB\""));
                None
            }
        }
    }
}

/// Reports a name defined twice in one section.
pub struct Names {
    what: &'static str,
    seen: HashSet<String>,
}

impl Names {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            seen: HashSet::new(),
        }
    }

    pub fn check(&mut self, v: &mut Validator<'_>, name: &Text) {
        let n = name.get_ref();
        if n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            v.problem(
                name.span(),
                format!(
                    "{}: name `{n}` must be non-empty and use only letters, digits, -, _ and .",
                    self.what
                ),
            );
        } else if !self.seen.insert(n.clone()) {
            v.problem(
                name.span(),
                format!("{}: the name `{n}` is defined twice", self.what),
            );
        }
    }
}
