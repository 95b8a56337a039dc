//! The storage abstraction against the local filesystem, memory, and a real
//! S3-compatible server (`QB_TEST_S3_ENDPOINT`, moto, started by
//! `scripts/services s3`) and the GCS emulator.

use bytes::Bytes;
use questboard_core::sessions::storage_prefix_for;
use questboard_core::storage::{Area, Error, Storage};

/// The same checks, whatever the backend.
async fn exercise(storage: &Storage) {
    let a = storage
        .session(&storage_prefix_for(uuid::Uuid::now_v7()))
        .expect("session a");
    let b = storage
        .session(&storage_prefix_for(uuid::Uuid::now_v7()))
        .expect("session b");

    let png = Bytes::from_static(b"\x89PNG\r\n\x1a\nfake");
    let info = a
        .put(Area::Images, "portraits/hero.png", png.clone(), "image/png")
        .await
        .expect("put");
    assert_eq!(
        (info.size, info.content_type.as_str()),
        (png.len() as u64, "image/png")
    );
    a.put(
        Area::Audio,
        "theme.ogg",
        Bytes::from_static(b"OggS"),
        "audio/ogg",
    )
    .await
    .expect("put audio");
    a.put(
        Area::Data,
        "state.json",
        Bytes::from_static(b"{\"hp\":3}"),
        "application/json; charset=utf-8",
    )
    .await
    .expect("put json");
    a.put(
        Area::Logs,
        "turns.jsonl",
        Bytes::from_static(b"{}\n"),
        "application/x-ndjson",
    )
    .await
    .expect("put log");

    let file = a
        .get(Area::Images, "portraits/hero.png")
        .await
        .expect("get");
    assert_eq!(file.bytes, png);
    assert_eq!(file.info.content_type, "image/png");

    // Each area lists only its own files; media/images does not show up in media/audio.
    let images = a.list(Area::Images).await.expect("list");
    assert_eq!(
        images.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        ["portraits/hero.png"]
    );
    let audio = a.list(Area::Audio).await.expect("list");
    assert_eq!(
        audio.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        ["theme.ogg"]
    );
    assert_eq!(audio[0].content_type, "audio/ogg");

    // Sessions are isolated.
    assert!(b.list(Area::Images).await.expect("list b").is_empty());
    assert!(matches!(
        b.get(Area::Images, "portraits/hero.png").await,
        Err(Error::NotFound)
    ));

    // Overwrite, then delete (twice: deleting a missing file succeeds).
    a.put(
        Area::Images,
        "portraits/hero.png",
        Bytes::from_static(b"v2"),
        "image/png",
    )
    .await
    .expect("overwrite");
    assert_eq!(
        a.get(Area::Images, "portraits/hero.png")
            .await
            .expect("get")
            .bytes,
        Bytes::from_static(b"v2")
    );
    a.delete(Area::Images, "portraits/hero.png")
        .await
        .expect("delete");
    a.delete(Area::Images, "portraits/hero.png")
        .await
        .expect("delete again");
    assert!(matches!(
        a.get(Area::Images, "portraits/hero.png").await,
        Err(Error::NotFound)
    ));
    assert!(a.list(Area::Images).await.expect("list").is_empty());

    // A content type that disagrees with the extension is refused.
    let err = a
        .put(
            Area::Images,
            "x.png",
            Bytes::from_static(b"<script>"),
            "text/html",
        )
        .await;
    assert!(
        matches!(err, Err(Error::ContentTypeMismatch { .. })),
        "{err:?}"
    );

    // Path tricks are refused before anything is written or read.
    for name in [
        "../escape.png",
        "/etc/passwd",
        "a/../../b.png",
        "a\0b.png",
        "a\\b.png",
        ".env",
        "",
        "a//b.png",
        "%2e%2e/x.png",
    ] {
        assert!(
            matches!(
                a.put(Area::Images, name, Bytes::new(), "image/png").await,
                Err(Error::InvalidName(_))
            ),
            "{name:?}"
        );
        assert!(
            matches!(a.get(Area::Images, name).await, Err(Error::InvalidName(_))),
            "{name:?}"
        );
        assert!(
            matches!(
                a.delete(Area::Images, name).await,
                Err(Error::InvalidName(_))
            ),
            "{name:?}"
        );
    }
    assert!(storage.session("../other").is_err());
    assert!(storage.session("/abs").is_err());
}

#[tokio::test]
async fn in_memory_storage() {
    exercise(&Storage::from_url("memory://").expect("memory")).await;
}

#[tokio::test]
async fn local_filesystem_storage_keeps_files_under_its_root() {
    let root = std::env::temp_dir().join(format!("qb-storage-{}", uuid::Uuid::new_v4()));
    let storage = Storage::from_url(&format!("file://{}", root.display())).expect("fs");
    exercise(&storage).await;

    // The layout on disk is <root>/sessions/<id>/<area>/<name>.
    let id = uuid::Uuid::now_v7();
    let files = storage.session(&storage_prefix_for(id)).expect("session");
    files
        .put(
            Area::Images,
            "map.webp",
            Bytes::from_static(b"RIFF"),
            "image/webp",
        )
        .await
        .expect("put");
    let on_disk = root.join(format!("sessions/{id}/media/images/map.webp"));
    assert_eq!(std::fs::read(&on_disk).expect("file on disk"), b"RIFF");
    // Nothing was written outside the root by the refused names.
    assert!(!root.parent().expect("parent").join("escape.png").exists());
    std::fs::remove_dir_all(&root).expect("cleanup");

    // Relative paths work too (the default is ./data/storage); bad URLs are refused.
    assert!(Storage::from_url("file://relative/path").is_err());
    assert!(Storage::from_url("ftp://host/x").is_err());
    assert!(Storage::from_url("s3://").is_err());
}

#[tokio::test]
async fn s3_compatible_storage() {
    let storage = crate::helpers::s3_test_storage("tenant-a").await;
    storage.check().await.expect("s3 reachable");
    exercise(&storage).await;

    // The URL's prefix is applied: objects land under tenant-a/sessions/...
    let (endpoint, bucket) = crate::helpers::s3_location(&storage);
    let listing = reqwest::Client::new()
        .get(format!("{endpoint}/{bucket}?list-type=2"))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("text");
    assert!(listing.contains("<Key>tenant-a/sessions/"), "{listing}");
}

/// Google Cloud Storage (the design documents' Cloud Run deployment),
/// against the GCS emulator: the same checks as every backend.
#[tokio::test]
async fn gcs_storage() {
    let storage = crate::helpers::gcs_test_storage("tenant-g").await;
    storage.check().await.expect("gcs reachable");
    exercise(&storage).await;
    // The URL's prefix is applied: objects land under tenant-g/sessions/...
    let endpoint = crate::helpers::gcs_endpoint();
    let bucket = storage
        .describe()
        .trim_start_matches("gs://")
        .split('/')
        .next()
        .expect("bucket")
        .to_owned();
    let a = storage
        .session(&storage_prefix_for(uuid::Uuid::now_v7()))
        .expect("session");
    a.put(
        Area::Data,
        "x.json",
        Bytes::from_static(b"{}"),
        "application/json",
    )
    .await
    .expect("put");
    let listing = reqwest::Client::new()
        .get(format!("{endpoint}/storage/v1/b/{bucket}/o"))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("text");
    assert!(listing.contains("tenant-g/sessions/"), "{listing}");
}
