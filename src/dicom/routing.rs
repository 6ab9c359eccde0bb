//! Routing rules: which complete series become jobs, with which options and destinations.
//! The first rule whose conditions all hold wins; a series that no rule matches is kept and shown
//! as unrouted, never processed.

use regex::Regex;

use crate::config::RoutingRule;

/// The attributes of a series that rules look at.
#[derive(Debug, Clone, Default)]
pub struct SeriesAttributes {
    /// Modality.
    pub modality: Option<String>,
    /// Body Part Examined.
    pub body_part: Option<String>,
    /// Series Description.
    pub series_description: Option<String>,
    /// Protocol Name.
    pub protocol_name: Option<String>,
    /// The sender's AE title.
    pub calling_ae: String,
    /// The AE title the sender addressed.
    pub called_ae: String,
}

/// The rules, with their regular expressions compiled once.
#[derive(Debug, Clone)]
pub struct Router {
    rules: Vec<(RoutingRule, Option<Regex>)>,
}

/// A rule whose regular expression does not compile (configuration validation already checks
/// this, so it only happens for rules built in code).
#[derive(Debug, thiserror::Error)]
#[error("routing rule {rule}: series_description: {source}")]
pub struct RouterError {
    rule: String,
    source: regex::Error,
}

fn same(want: &Option<String>, have: Option<&str>) -> bool {
    match want {
        None => true,
        Some(w) => have.is_some_and(|h| h.trim().eq_ignore_ascii_case(w.trim())),
    }
}

impl Router {
    /// Compiles the rules.
    pub fn new(rules: &[RoutingRule]) -> Result<Self, RouterError> {
        let rules = rules
            .iter()
            .map(|r| {
                let re = r
                    .match_rule
                    .series_description
                    .as_deref()
                    .map(Regex::new)
                    .transpose()
                    .map_err(|source| RouterError {
                        rule: r.name.clone(),
                        source,
                    })?;
                Ok((r.clone(), re))
            })
            .collect::<Result<_, RouterError>>()?;
        Ok(Self { rules })
    }

    /// The first rule that matches, if any.
    pub fn route(&self, s: &SeriesAttributes) -> Option<&RoutingRule> {
        self.rules.iter().find_map(|(rule, re)| {
            if rule.fallback {
                return Some(rule);
            }
            let m = &rule.match_rule;
            let description_ok = re.as_ref().is_none_or(|re| {
                s.series_description
                    .as_deref()
                    .is_some_and(|d| re.is_match(d))
            });
            let ok = same(&m.modality, s.modality.as_deref())
                && same(&m.body_part, s.body_part.as_deref())
                && same(&m.protocol_name, s.protocol_name.as_deref())
                && same(&m.calling_ae, Some(&s.calling_ae))
                && same(&m.called_ae, Some(&s.called_ae))
                && description_ok;
            ok.then_some(rule)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleMatch;
    use crate::pipeline::JobOptions;

    fn rule(name: &str, m: RuleMatch, fallback: bool) -> RoutingRule {
        RoutingRule {
            name: name.into(),
            match_rule: m,
            options: JobOptions::default(),
            destinations: vec![],
            fallback,
        }
    }

    #[test]
    fn first_matching_rule_wins_and_fallback_catches_the_rest() {
        let dess = RuleMatch {
            modality: Some("MR".into()),
            body_part: Some("knee".into()),
            series_description: Some("(?i)dess".into()),
            ..Default::default()
        };
        let from_pacs = RuleMatch {
            calling_ae: Some("PACS".into()),
            ..Default::default()
        };
        let router = Router::new(&[
            rule("dess", dess, false),
            rule("pacs", from_pacs, false),
            rule("rest", RuleMatch::default(), true),
        ])
        .unwrap();
        let mut s = SeriesAttributes {
            modality: Some("MR".into()),
            body_part: Some("KNEE".into()),
            series_description: Some("Sag 3D DESS WE".into()),
            calling_ae: "SCANNER".into(),
            called_ae: "KNEENODE".into(),
            ..Default::default()
        };
        assert_eq!(router.route(&s).unwrap().name, "dess");
        s.series_description = Some("COR PD".into());
        assert_eq!(router.route(&s).unwrap().name, "rest");
        s.calling_ae = "PACS".into();
        assert_eq!(router.route(&s).unwrap().name, "pacs");
        let strict = Router::new(&[rule(
            "pacs",
            RuleMatch {
                calling_ae: Some("PACS".into()),
                ..Default::default()
            },
            false,
        )])
        .unwrap();
        s.calling_ae = "OTHER".into();
        assert!(strict.route(&s).is_none());
    }
}
