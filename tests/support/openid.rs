//! A real third-party OpenID provider for the tests: oauth2-mock-server
//! (npm, pinned in tests/oidc/package-lock.json, installed by scripts/test)
//! run by Node.js through tests/oidc/provider.mjs. Events it prints (token
//! requests, userinfo calls, key rotations) are collected for the tests.

use std::time::Duration;

use serde_json::Value;

use super::node::NodeScript;

pub struct OpenIdProvider {
    node: NodeScript,
    pub issuer: String,
}

impl OpenIdProvider {
    /// Starts the provider on `port` (0: any), its tokens living `expires_in`.
    pub fn start(port: u16, expires_in: Duration) -> OpenIdProvider {
        let node = NodeScript::start(
            "oidc",
            "oauth2-mock-server",
            "provider.mjs",
            &[port.to_string(), expires_in.as_secs().to_string()],
        );
        let issuer = node.listening["issuer"].as_str().unwrap().to_string();
        OpenIdProvider { node, issuer }
    }

    /// Every event so far named `name`.
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.node.events(name)
    }

    /// The events named `name` once there are at least `count` (their
    /// lines are read by another thread: waits at most 10 s).
    pub fn events_at_least(&mut self, name: &str, count: usize) -> Vec<Value> {
        self.node
            .wait_for_count(name, count, Duration::from_secs(10));
        self.events(name)
    }

    /// Puts `claims` into every token from now on (over the defaults:
    /// email john.doe@example.com, name John Doe, groups staff and admins).
    pub fn set_claims(&mut self, claims: &Value) {
        let before = self.events("claims").len();
        self.node.send_line(&format!("claims {claims}"));
        self.node
            .wait_for_count("claims", before + 1, Duration::from_secs(10));
    }

    /// A logout token signed by the provider's current key, with `claims`
    /// over iss, iat, exp and nbf (a null removes one).
    pub fn logout_token(&mut self, claims: &Value) -> String {
        let before = self.events("logout_token").len();
        self.node.send_line(&format!("logout {claims}"));
        self.node
            .wait_for_count("logout_token", before + 1, Duration::from_secs(10));
        self.events("logout_token")[before]["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Publishes a new key (`RS256` or `ES256`) and signs with it from now on.
    pub fn rotate(&mut self, alg: &str) -> String {
        let before = self.events("rotated").len();
        self.node.send_line(&format!("rotate {alg}"));
        self.node
            .wait_for_count("rotated", before + 1, Duration::from_secs(10));
        self.events("rotated").last().unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// A sidecar configuration logging in with `issuer` (client
/// `sidecar-client`) in front of `upstream`.
pub fn sidecar_conf(upstream: &str, issuer: &str) -> super::Conf {
    super::Conf::new(upstream)
        .provider("kind = \"oidc\"")
        .provider(&format!("base_url = {issuer:?}"))
        .provider("client_id = \"sidecar-client\"")
        .provider("client_secret = \"s3cret\"")
}
