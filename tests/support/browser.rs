//! A browser stand-in: follows nothing by itself, keeps cookies by name (one
//! site: every server here is 127.0.0.1), and remembers each Set-Cookie as
//! sent so tests can check its flags.

use std::collections::HashMap;

use reqwest::{Method, Response, StatusCode};

use super::http_client;

pub struct Browser {
    client: reqwest::Client,
    pub cookies: HashMap<String, String>,
    /// Every Set-Cookie header received, in order.
    pub set_cookies: Vec<String>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        Self {
            client: http_client(),
            cookies: HashMap::new(),
            set_cookies: Vec::new(),
        }
    }

    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Sends a request as a browser navigation (Accept: text/html).
    pub async fn send(
        &mut self,
        method: Method,
        url: &str,
        form: Option<&[(&str, &str)]>,
    ) -> Response {
        let mut req = self
            .client
            .request(method, url)
            .header("accept", "text/html,application/xhtml+xml");
        if !self.cookies.is_empty() {
            req = req.header("cookie", self.cookie_header());
        }
        if let Some(form) = form {
            req = req.form(form);
        }
        let resp = req.send().await.unwrap();
        for sc in resp.headers().get_all("set-cookie") {
            let text = sc.to_str().unwrap().to_string();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if text.contains("Max-Age=0") || value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
            self.set_cookies.push(text);
        }
        resp
    }

    /// An API request (no text/html) with this browser's cookies; cookies
    /// it sets are not kept.
    pub async fn api(&self, url: &str) -> Response {
        self.client
            .get(url)
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap()
    }

    /// [`Self::api`] to an upstream `echo` route: expects 200, returns its JSON.
    pub async fn echo(&self, url: &str) -> serde_json::Value {
        super::echo_with(&self.cookie_header(), url).await
    }

    pub async fn get(&mut self, url: &str) -> Response {
        self.send(Method::GET, url, None).await
    }

    /// The Location of a redirect, or a panic naming what came instead.
    pub fn location(resp: &Response) -> String {
        assert_eq!(resp.status(), StatusCode::FOUND, "expected a redirect");
        resp.headers()["location"].to_str().unwrap().to_string()
    }

    /// From a protected page to the IdP's login form: returns the authorize
    /// URL the sidecar sent the browser to.
    pub async fn open_login_page(&mut self, url: &str) -> String {
        let resp = self.get(url).await;
        let authorize = Self::location(&resp);
        let page = self.get(&authorize).await;
        assert_eq!(page.status(), 200, "login page");
        let html = page.text().await.unwrap();
        assert!(
            html.contains(r#"name="user_id""#),
            "no user_id input: {html}"
        );
        authorize
    }

    /// Types `user` into the mock EMP's form and submits it; returns the
    /// callback URL the IdP redirected to.
    pub async fn submit_login(&mut self, authorize: &str, user: &str) -> String {
        let url = url::Url::parse(authorize).unwrap();
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        let login = format!("{}://{}/login", url.scheme(), url.authority());
        let form = [
            ("client_id", q["client_id"].as_str()),
            ("redirect_uri", q["redirect_uri"].as_str()),
            ("state", q["state"].as_str()),
            ("user_id", user),
        ];
        let resp = self.send(Method::POST, &login, Some(&form)).await;
        Self::location(&resp)
    }

    /// The whole login for `user`, starting at `url`; returns the response
    /// to the callback (normally a redirect back to `url`).
    pub async fn login(&mut self, url: &str, user: &str) -> Response {
        let authorize = self.open_login_page(url).await;
        let callback = self.submit_login(&authorize, user).await;
        self.get(&callback).await
    }
}
