//! The storage test servers: an S3-compatible one (moto) and the GCS
//! emulator, both started by `scripts/services s3 gcs`.

/// The S3-compatible test server (`QB_TEST_S3_ENDPOINT`). A run without
/// one fails, saying how to start it: a storage test that returned early
/// would pass without testing anything.
pub fn s3_endpoint() -> String {
    std::env::var("QB_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "QB_TEST_S3_ENDPOINT is unset: start the S3-compatible test server with \
             `eval \"$(scripts/services s3 gcs)\"` (scripts/test does)"
        )
    })
}

/// The GCS emulator (`QB_TEST_GCS_ENDPOINT`); like [`s3_endpoint`].
pub fn gcs_endpoint() -> String {
    std::env::var("QB_TEST_GCS_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "QB_TEST_GCS_ENDPOINT is unset: start the GCS emulator with \
             `eval \"$(scripts/services s3 gcs)\"` (scripts/test does)"
        )
    })
}

/// A fresh bucket on the S3-compatible test server ([`s3_endpoint`]),
/// opened as storage under `prefix`.
pub async fn s3_test_storage(prefix: &str) -> questboard_core::storage::Storage {
    let endpoint = s3_endpoint();
    let bucket = format!("qb-{}", uuid::Uuid::new_v4().simple());
    // object_store cannot create buckets; moto accepts an unsigned PUT.
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("create bucket");
    assert!(
        created.status().is_success(),
        "create bucket: {}",
        created.status()
    );
    let options = [
        ("aws_endpoint", endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_region", "us-east-1"),
        ("aws_virtual_hosted_style_request", "false"),
    ];
    questboard_core::storage::Storage::from_url_with(&format!("s3://{bucket}/{prefix}"), options)
        .expect("s3 storage")
}

/// The endpoint and bucket of storage made by [`s3_test_storage`].
pub fn s3_location(storage: &questboard_core::storage::Storage) -> (String, String) {
    let endpoint = s3_endpoint();
    let bucket = storage
        .describe()
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .expect("bucket")
        .to_owned();
    (endpoint, bucket)
}

/// A fresh bucket on the GCS emulator ([`gcs_endpoint`]: PyPI's
/// gcp-storage-emulator behind `scripts/gcs-emulator`), opened as storage
/// under `prefix` through `google_base_url` with a static bearer token
/// (the emulator checks none).
pub async fn gcs_test_storage(prefix: &str) -> questboard_core::storage::Storage {
    let endpoint = gcs_endpoint();
    let bucket = format!("qb-{}", uuid::Uuid::new_v4().simple());
    // object_store cannot create buckets; the JSON API's insert does.
    let created = reqwest::Client::new()
        .post(format!("{endpoint}/storage/v1/b?project=questboard-test"))
        .json(&serde_json::json!({ "name": bucket }))
        .send()
        .await
        .expect("create bucket");
    assert!(
        created.status().is_success(),
        "create bucket: {}",
        created.status()
    );
    questboard_core::storage::Storage::from_url_with(
        &format!("gs://{bucket}/{prefix}"),
        gcs_options(&endpoint),
    )
    .expect("gcs storage")
}

/// The object_store options that reach the GCS emulator at `endpoint`
/// (a static token: object_store 0.14 fetches one for uploads even with
/// `google_skip_signature`).
pub fn gcs_options(endpoint: &str) -> [(&'static str, String); 2] {
    [
        ("google_base_url", endpoint.to_owned()),
        ("google_bearer_token", "emulator".to_owned()),
    ]
}
