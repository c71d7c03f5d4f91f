//! The `info=` parameter (protocol doc 1.16), parsed once into a typed set.
//!
//! Invariant: an unknown attribute is refused here, for every endpoint; each endpoint then only
//! decides which known attributes apply to its channels.

use std::fmt;

use super::ApiError;

/// One attribute a request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoAttribute {
    UserCount,
    SubscriptionCount,
    Cache,
}

impl InfoAttribute {
    const ALL: [InfoAttribute; 3] = [
        InfoAttribute::UserCount,
        InfoAttribute::SubscriptionCount,
        InfoAttribute::Cache,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InfoAttribute::UserCount => "user_count",
            InfoAttribute::SubscriptionCount => "subscription_count",
            InfoAttribute::Cache => "cache",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for InfoAttribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The set of attributes asked for; empty when `info` is absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Info(u8);

impl Info {
    /// Parses `a,b,c` (spaces and empty items ignored, as the SDKs join with `,`).
    ///
    /// # Errors
    /// An attribute herald does not know.
    pub fn parse(info: Option<&str>) -> Result<Info, ApiError> {
        let mut set = Info::default();
        for name in info.unwrap_or_default().split(',').map(str::trim) {
            if name.is_empty() {
                continue;
            }
            let attr = InfoAttribute::ALL
                .into_iter()
                .find(|a| a.as_str() == name)
                .ok_or_else(|| ApiError::UnknownInfo(name.to_owned()))?;
            set.0 |= attr.bit();
        }
        Ok(set)
    }

    pub fn contains(self, attr: InfoAttribute) -> bool {
        self.0 & attr.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Refuses `attr` when it was asked for, with `reason`.
    ///
    /// # Errors
    /// `attr` is in the set.
    pub fn refuse(self, attr: InfoAttribute, reason: &'static str) -> Result<(), ApiError> {
        if self.contains(attr) {
            return Err(ApiError::InfoNotApplicable {
                attribute: attr,
                reason,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: Option<&str>, want: &str) {
        let got = match Info::parse(input) {
            Ok(info) => InfoAttribute::ALL
                .into_iter()
                .filter(|a| info.contains(*a))
                .map(InfoAttribute::as_str)
                .collect::<Vec<_>>()
                .join("|"),
            Err(err) => format!("error: {err}"),
        };
        assert_eq!(got, want, "{input:?}");
    }

    #[test]
    fn info_parses_into_a_set() {
        check(None, "");
        check(Some(""), "");
        check(Some("user_count"), "user_count");
        check(
            Some("subscription_count, user_count,,"),
            "user_count|subscription_count",
        );
        check(Some("cache,cache"), "cache");
        check(
            Some("user_count,members"),
            "error: Unknown info attribute \"members\" (known: user_count, subscription_count, cache)",
        );
    }
}
