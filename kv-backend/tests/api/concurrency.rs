//! Concurrent clients through the writer's group commit: writes racing for
//! the same key get exactly one 201, and every 2xx has its own seq.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::Value;

use crate::helpers::TestApp;

const ONE: &str = "/api/9/http/keyvals/one";

/// 40 clients POST the same key and 40 others distinct keys, all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_posts_of_one_key_make_exactly_one_winner() {
    let app = Arc::new(TestApp::new());
    let mut tasks = Vec::new();
    for i in 0..80 {
        let app = Arc::clone(&app);
        tasks.push(tokio::spawn(async move {
            let body = if i % 2 == 0 {
                format!(r#"{{"same":"{i}"}}"#)
            } else {
                format!(r#"{{"k{i}":"{i}"}}"#)
            };
            let response = app.post(ONE, &body).await;
            (
                i,
                response.status,
                response.header("x-replikv-seq").map(str::to_owned),
            )
        }));
    }
    let mut seqs = BTreeSet::new();
    let mut same_winners = 0;
    for task in tasks {
        let (i, status, seq) = task.await.unwrap();
        match (i % 2, status) {
            (0, StatusCode::CREATED) => same_winners += 1,
            (0, StatusCode::CONFLICT) => {}
            (1, StatusCode::CREATED) => {}
            other => panic!("unexpected {other:?}"),
        }
        if let Some(seq) = seq {
            assert!(
                seqs.insert(seq.parse::<u64>().unwrap()),
                "seq {seq} given twice"
            );
        }
    }
    assert_eq!(same_winners, 1);
    assert_eq!(seqs, (1..=41).collect::<BTreeSet<u64>>());
    let zone = app.zone("one").await;
    assert_eq!(zone.as_object().map(|o| o.len()), Some(41));
    let status = app.get("/replikv/status").await.json();
    assert!(status["commits"].as_u64().unwrap() <= 41);
    assert_eq!(status["seq"], Value::from(41));
}
