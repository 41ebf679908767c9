//! The bookstore page in a real browser: headless Chromium loads it from the running app,
//! renders it (styles and images from `/static`, nothing from the internet) and takes
//! screenshots. Needs Debian's `chromium`; `.ci/run` installs it. Outside CI a machine
//! without Chromium skips this test with a message.

use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
}

fn headless(browser: &Path, args: &[&str]) -> std::process::Output {
    let profile = tempdir("chromium-profile");
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium runs")
}

fn tempdir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_renders_in_chromium_with_each_reviews_version() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium installed"
        );
        eprintln!("skipping: no chromium on this machine (apt-get install chromium)");
        return;
    };
    let app = bookinfo::start(bookinfo::Config::ephemeral())
        .await
        .unwrap();
    let url = app.addrs.page_url();

    // Each page load goes to the next reviews version: v1, v2, v3.
    let dir = tempdir("screenshots");
    let mut seen = Vec::new();
    for n in 1..=3 {
        let dom = {
            let browser = browser.clone();
            let url = url.clone();
            tokio::task::spawn_blocking(move || headless(&browser, &["--dump-dom", &url]))
                .await
                .unwrap()
        };
        assert!(
            dom.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&dom.stderr)
        );
        let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
        assert!(dom.contains("<title>Simple Bookstore App</title>"), "{dom}");
        assert!(dom.contains("Book Details") && dom.contains("Book Reviews"));
        let stars = dom.matches("glyphicon glyphicon-star").count();
        seen.push(if dom.contains("text-red-500\"") {
            "red"
        } else if stars == 9 {
            "black"
        } else {
            "none"
        });

        let shot = dir.join(format!("productpage-{n}.png"));
        let _ = std::fs::remove_file(&shot);
        let args = [
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,1400".to_owned(),
            url.clone(),
        ];
        let browser = browser.clone();
        let out = tokio::task::spawn_blocking(move || {
            headless(
                &browser,
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // A blank or unstyled page compresses to a few KB; the styled page with text, table,
        // stars and avatars is far larger.
        assert!(
            png.len() > 30_000,
            "{} is only {} bytes",
            shot.display(),
            png.len()
        );
        eprintln!("screenshot: {}", shot.display());
    }
    seen.sort();
    assert_eq!(seen, ["black", "none", "red"]);
    app.shutdown().await;
}
