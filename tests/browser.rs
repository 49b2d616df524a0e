//! A real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! which `scripts/test` installs when missing), driven over WebDriver with
//! fantoccini: the protected demo app, the mock EMP's login form, back to
//! the original page with the injected user header rendered, the session
//! cookie's flags as the browser holds them, sign-out, and login again.
//! A screenshot is saved to `target/test-artifacts/browser-login.png`.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use support::{Conf, Sidecar};
use tokio::net::TcpListener;

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_chromedriver(port: u16) -> Driver {
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver: run ./scripts/test, which installs chromium-driver");
    let driver = Driver(child);
    assert!(
        support::wait_for_port(port),
        "chromedriver did not listen on {port}"
    );
    driver
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_logs_in_with_chromium_and_sees_their_name() {
    for (cmd, arg) in [("chromium", "--version"), ("chromedriver", "--version")] {
        let out = Command::new(cmd).arg(arg).output().unwrap();
        eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    }
    // The demo app behind the sidecar, the mock EMP as the identity provider.
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    emp_sidecar::demo::start_app(app);
    let emp = support::mock_emp(std::time::Duration::from_secs(3600)).await;
    let sc = Sidecar::start(&Conf::new(&format!("http://{app_addr}")).emp(&emp.base_url())).await;

    let driver_port = support::free_port();
    let _driver = start_chromedriver(driver_port);
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let client = ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("a Chromium session");
    let wait = Duration::from_secs(15);

    // 1. The protected page sends the browser to the mock EMP's login form.
    let page = sc.url("/app/page?x=1");
    client.goto(&page).await.unwrap();
    let input = client
        .wait()
        .at_most(wait)
        .for_element(Locator::Css(r#"input[name="user_id"]"#))
        .await
        .expect("the EMP login form");
    assert!(
        client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .starts_with(&emp.base_url())
    );

    // 2. Type a user id and submit: back on the original page, as that user.
    input.send_keys("alice").await.unwrap();
    client
        .find(Locator::Css(r#"button[type="submit"]"#))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let user = client
        .wait()
        .at_most(wait)
        .for_element(Locator::Id("user"))
        .await
        .unwrap();
    assert_eq!(user.text().await.unwrap(), "alice");
    assert_eq!(client.current_url().await.unwrap().as_str(), page);

    // 3. The session cookie, as the browser holds it.
    let cookies = client.get_all_cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|c| c.name() == "_emp_sidecar")
        .expect("session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(session.same_site(), Some(cookie::SameSite::Lax));
    assert!(
        !cookies.iter().any(|c| c.name() == "_emp_sidecar_csrf"),
        "login cookie left behind"
    );

    let png = client.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("browser-login.png"), &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"));

    // 4. Sign out: the next visit goes to the login form again.
    client
        .find(Locator::Id("sign-out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .at_most(wait)
        .for_element(Locator::Css(r#"input[name="user_id"]"#))
        .await
        .expect("sent to log in again after signing out");
    let cookies = client.get_all_cookies().await.unwrap();
    assert!(
        !cookies.iter().any(|c| c.name() == "_emp_sidecar"),
        "session cookie not cleared"
    );

    client.close().await.unwrap();
    sc.shutdown().await;
}
