//! Who may enter once logged in (`[authorization]`), as oauth2-proxy's
//! `--email-domain`, `--authenticated-emails-file` and `--allowed-group`,
//! with per-path rules on top.
//!
//! A [`Rule`] holds up to three conditions, each checked only when set:
//! the email (its domain in the allowed domains, or the address in the
//! allowed emails), the groups (any one of the allowed), and claim values
//! (every listed JSON Pointer holds one of its allowed values). The first
//! `[[authorization.rules]]` whose path regex matches the canonical path
//! replaces the top-level lists for that request. For `upbond` and `oidc`
//! an email counts only when the claims do not say `email_verified: false`.
//!
//! What a rule looks at is read out of a session's claims once ([`Facts`],
//! cached on the session) and checked per request with a few comparisons;
//! with no rule configured nothing is read or checked at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use regex::Regex;
use serde_json::Value;

use crate::config::{AuthorizationConfig, Config, ProviderKind};

/// Each policy gets a number: facts read for an older one are read again.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// The label of the rule that refused a request, for the metric.
pub type RuleLabel = Arc<str>;

/// One set of conditions.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `default`, `rules[N]` or `auth_request` (the metric label).
    pub label: RuleLabel,
    domains: Vec<String>,
    emails: Vec<String>,
    groups: Vec<String>,
    /// Index into the policy's claim pointers → allowed values.
    claims: Vec<(usize, Vec<String>)>,
}

impl Rule {
    fn open(label: &str) -> Rule {
        Rule {
            label: label.into(),
            domains: Vec::new(),
            emails: Vec::new(),
            groups: Vec::new(),
            claims: Vec::new(),
        }
    }

    /// Whether the rule sets no condition (anyone logged in may enter).
    pub fn is_open(&self) -> bool {
        self.domains.is_empty()
            && self.emails.is_empty()
            && self.groups.is_empty()
            && self.claims.is_empty()
    }

    pub fn allows(&self, facts: &Facts) -> bool {
        let email_ok = (self.domains.is_empty() && self.emails.is_empty())
            || facts.email.as_deref().is_some_and(|email| {
                self.emails.iter().any(|e| e == email)
                    || email.rsplit_once('@').is_some_and(|(_, domain)| {
                        self.domains.iter().any(|d| domain_matches(d, domain))
                    })
            });
        let groups_ok =
            self.groups.is_empty() || facts.groups.iter().any(|g| self.groups.contains(g));
        let claims_ok = self.claims.iter().all(|(i, allowed)| {
            facts
                .claims
                .get(*i)
                .is_some_and(|values| values.iter().any(|v| allowed.contains(v)))
        });
        email_ok && groups_ok && claims_ok
    }
}

/// `example.com` is that domain only; `.example.com` also its subdomains.
fn domain_matches(allowed: &str, domain: &str) -> bool {
    match allowed.strip_prefix('.') {
        Some(base) => {
            domain == base
                || domain
                    .strip_suffix(base)
                    .is_some_and(|sub| sub.ends_with('.'))
        }
        None => domain == allowed,
    }
}

/// What the rules look at, read out of one session's claims.
#[derive(Debug, Default)]
pub struct Facts {
    generation: u64,
    /// Lower case; `None` when absent or not verified.
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// One list per claim pointer the rules use (arrays give several values).
    pub claims: Vec<Vec<String>>,
}

/// Every rule of one configuration.
#[derive(Debug)]
pub struct Policy {
    generation: u64,
    default: Rule,
    /// Each rule's path; tried in order, the first that matches wins (no
    /// `RegexSet`: it would find every match, into a fresh allocation).
    paths: Vec<Regex>,
    rules: Vec<Rule>,
    email_claim: String,
    groups_claim: String,
    /// An email counts only when `email_verified` is not false.
    verified_emails_only: bool,
    /// The claim pointers the rules use.
    pointers: Vec<String>,
}

impl Policy {
    pub fn new(config: &Config) -> Policy {
        let a: &AuthorizationConfig = &config.authorization;
        let mut pointers: Vec<String> = Vec::new();
        let mut pointer_index = |p: &str| match pointers.iter().position(|q| q == p) {
            Some(i) => i,
            None => {
                pointers.push(p.to_string());
                pointers.len() - 1
            }
        };
        let default = Rule {
            label: "default".into(),
            domains: a.allowed_email_domains.clone(),
            emails: a.allowed_emails.clone(),
            groups: a.allowed_groups.clone(),
            claims: Vec::new(),
        };
        let rules = a
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule {
                label: format!("rules[{}]", i + 1).into(),
                domains: r.allowed_email_domains.clone(),
                emails: r.allowed_emails.clone(),
                groups: r.allowed_groups.clone(),
                claims: r
                    .claims
                    .iter()
                    .map(|(p, values)| (pointer_index(p), values.clone()))
                    .collect(),
            })
            .collect();
        let paths = a.rules.iter().map(|r| r.path.clone()).collect();
        Policy {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            default,
            paths,
            rules,
            email_claim: config.headers.email_claim.clone(),
            groups_claim: a.groups_claim.clone(),
            verified_emails_only: matches!(
                config.provider.kind,
                ProviderKind::Upbond | ProviderKind::Oidc
            ),
            pointers,
        }
    }

    /// No rule at all: every logged-in user may enter everywhere.
    pub fn is_open(&self) -> bool {
        self.rules.is_empty() && self.default.is_open()
    }

    /// The top-level lists.
    pub fn default_rule(&self) -> &Rule {
        &self.default
    }

    /// The rule for a canonical path: the first per-path rule that matches,
    /// else the top-level lists.
    pub fn rule_for(&self, path: &str) -> &Rule {
        self.paths
            .iter()
            .position(|p| p.is_match(path))
            .and_then(|i| self.rules.get(i))
            .unwrap_or(&self.default)
    }

    /// Whether `facts` were read for this policy.
    pub fn current(&self, facts: &Facts) -> bool {
        facts.generation == self.generation
    }

    /// A session's facts for this policy: cached on the session, read out
    /// of its claims (JSON text) the first time, and again after a reload.
    pub fn facts_of(&self, cache: &arc_swap::ArcSwapOption<Facts>, claims: &str) -> Arc<Facts> {
        if let Some(f) = cache.load_full()
            && self.current(&f)
        {
            return f;
        }
        let value: Value = serde_json::from_str(claims).unwrap_or(Value::Null);
        let f = Arc::new(self.facts(&value));
        cache.store(Some(f.clone()));
        f
    }

    /// Checks a session's claims against `rule` and, when given, `also`
    /// (the `/oauth2/auth` query's); the refusing rule's label.
    pub fn check(
        &self,
        rule: &Rule,
        also: Option<&Rule>,
        cache: &arc_swap::ArcSwapOption<Facts>,
        claims: &str,
    ) -> Result<(), RuleLabel> {
        if rule.is_open() && also.is_none() {
            return Ok(());
        }
        let verdict = |facts: &Facts| {
            for r in std::iter::once(rule).chain(also) {
                if !r.allows(facts) {
                    return Err(r.label.clone());
                }
            }
            Ok(())
        };
        // The cached facts, without touching their reference count.
        if let Some(facts) = cache.load().as_ref()
            && self.current(facts)
        {
            return verdict(facts);
        }
        verdict(&self.facts_of(cache, claims))
    }

    /// Reads what the rules look at out of a session's claims.
    pub fn facts(&self, claims: &Value) -> Facts {
        // Some providers send the flag as a string.
        let unverified = match claims.get("email_verified") {
            Some(Value::Bool(false)) => true,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("false"),
            _ => false,
        };
        let verified = !(self.verified_emails_only && unverified);
        let email = claims
            .pointer(&self.email_claim)
            .and_then(Value::as_str)
            .filter(|_| verified && !self.email_claim.is_empty())
            .map(str::to_ascii_lowercase);
        let groups = match claims.pointer(&self.groups_claim) {
            _ if self.groups_claim.is_empty() => Vec::new(),
            Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
            Some(v) => texts(v),
            None => Vec::new(),
        };
        Facts {
            generation: self.generation,
            email,
            groups,
            claims: self
                .pointers
                .iter()
                .map(|p| claims.pointer(p).map(texts).unwrap_or_default())
                .collect(),
        }
    }

    /// `/oauth2/auth?allowed_groups=&allowed_emails=&allowed_email_domains=`
    /// (comma separated, as oauth2-proxy): a rule checked on top of the
    /// others; `None` without any of them.
    pub fn query_rule(query: &str) -> Option<Rule> {
        let mut rule = Rule::open("auth_request");
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let list = || {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            };
            match k.as_ref() {
                "allowed_groups" => rule.groups.extend(list()),
                "allowed_emails" => rule
                    .emails
                    .extend(list().into_iter().map(|e| e.to_ascii_lowercase())),
                "allowed_email_domains" => rule.domains.extend(list().into_iter().map(|d| {
                    let d = d.to_ascii_lowercase();
                    match d.strip_prefix("*.") {
                        Some(rest) => format!(".{rest}"),
                        None => d,
                    }
                })),
                _ => {}
            }
        }
        (!rule.is_open()).then_some(rule)
    }
}

/// A claim value as the texts it holds: a string, a number or a boolean
/// printed, or the scalar items of an array.
fn texts(v: &Value) -> Vec<String> {
    let one = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match v {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        v => one(v).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests;
