//! The same behaviour tests for both vector-store backends. `edge` always runs; `remote`
//! runs against a real Qdrant when CONFAB_TEST_QDRANT_URL is set (gRPC, e.g.
//! http://127.0.0.1:6334) and prints that it was skipped otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use confab::config::{VectorBackend, VectorConfig, test_qdrant_url};
use confab::vector::{ChunkPoint, SparseVec, VectorStore};

const DIM: usize = 8;

fn unit(i: usize) -> Vec<f32> {
    let mut v = vec![0.01; DIM];
    v[i % DIM] = 1.0;
    v
}

fn point(tenant: &str, doc: &str, chunk: usize, axis: usize) -> ChunkPoint {
    ChunkPoint {
        tenant: tenant.into(),
        doc_id: doc.into(),
        version: 1,
        chunk,
        title: format!("{doc} title"),
        section: "Intro".into(),
        page: Some(2),
        text: format!("{doc} chunk {chunk}"),
        vector: unit(axis),
        // Term `axis` with weight 1: sparse search for term i finds the chunks on axis i.
        sparse: SparseVec {
            indices: vec![axis as u32 + 100],
            values: vec![1.0],
        },
        pending: false,
    }
}

fn term(axis: usize) -> SparseVec {
    SparseVec {
        indices: vec![axis as u32 + 100],
        values: vec![1.0],
    }
}

async fn behaves(store: VectorStore) {
    store
        .upsert(vec![
            point("t1", "doc-a", 0, 0),
            point("t1", "doc-a", 1, 1),
            point("t1", "doc-b", 0, 2),
            point("t2", "doc-c", 0, 0),
        ])
        .await
        .unwrap();
    assert_eq!(store.count("t1").await.unwrap(), 3);
    assert_eq!(store.count("t2").await.unwrap(), 1);

    // Nearest first, payload intact, tenant-filtered.
    let hits = store.search("t1", unit(0), 10, None).await.unwrap();
    assert_eq!(hits.len(), 3);
    assert_eq!((hits[0].doc_id.as_str(), hits[0].chunk), ("doc-a", 0));
    assert_eq!(hits[0].title, "doc-a title");
    assert_eq!(hits[0].text, "doc-a chunk 0");
    assert_eq!((hits[0].section.as_str(), hits[0].page), ("Intro", Some(2)));
    assert!(hits[0].score > hits[1].score);

    // Sparse search: by term, tenant-filtered, with the dense vector for re-scoring.
    let sparse = store.search_sparse("t1", term(2), 10).await.unwrap();
    assert_eq!(sparse.len(), 1, "{sparse:?}");
    assert_eq!(sparse[0].hit.doc_id, "doc-b");
    // (Stored normalised, as cosine vectors are.)
    let dense = sparse[0].dense.clone().expect("dense vector returned");
    assert!(dense[2] > 0.99 && dense[0] < 0.02, "{dense:?}");
    assert!(
        store
            .search_sparse("t2", term(2), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let other = store.search("t2", unit(1), 10, None).await.unwrap();
    assert!(
        other.iter().all(|h| h.doc_id == "doc-c"),
        "tenant t2 sees only its own"
    );
    assert!(
        store
            .search("t3", unit(0), 10, None)
            .await
            .unwrap()
            .is_empty()
    );

    // Score floor.
    let hits = store.search("t1", unit(0), 10, Some(0.9)).await.unwrap();
    assert_eq!(hits.len(), 1);

    // Upsert of the same chunk replaces it.
    let mut moved = point("t1", "doc-a", 0, 3);
    moved.text = "replaced".into();
    store.upsert(vec![moved]).await.unwrap();
    assert_eq!(store.count("t1").await.unwrap(), 3);
    let hits = store.search("t1", unit(3), 1, None).await.unwrap();
    assert_eq!(hits[0].text, "replaced");

    // A new version is written pending: invisible until published, then it replaces the old.
    let mut v2 = point("t1", "doc-b", 0, 4);
    v2.version = 2;
    v2.pending = true;
    let mut v2b = point("t1", "doc-b", 1, 5);
    v2b.version = 2;
    v2b.pending = true;
    store.upsert(vec![v2, v2b]).await.unwrap();
    assert_eq!(
        store.count("t1").await.unwrap(),
        3,
        "pending chunks are not counted"
    );
    let hits = store.search("t1", unit(4), 10, None).await.unwrap();
    assert!(
        hits.iter().all(|h| h.doc_id != "doc-b" || h.chunk == 0),
        "{hits:?}"
    );
    assert!(
        store
            .search_sparse("t1", term(4), 10)
            .await
            .unwrap()
            .is_empty()
    );
    store.publish("t1", "doc-b", 2).await.unwrap();
    assert_eq!(
        store.count("t1").await.unwrap(),
        4,
        "old version gone, two new chunks live"
    );
    let hits = store.search("t1", unit(5), 1, None).await.unwrap();
    assert_eq!((hits[0].doc_id.as_str(), hits[0].chunk), ("doc-b", 1));
    assert_eq!(
        store.search_sparse("t1", term(2), 10).await.unwrap().len(),
        0
    );
    // A failed version is removed without touching the live one.
    let mut v3 = point("t1", "doc-b", 0, 6);
    v3.version = 3;
    v3.pending = true;
    store.upsert(vec![v3]).await.unwrap();
    store.delete_version("t1", "doc-b", 3).await.unwrap();
    store.publish("t1", "doc-b", 2).await.unwrap();
    assert_eq!(store.count("t1").await.unwrap(), 4);

    // Deleting a document removes all its chunks, only in that tenant.
    store.delete_document("t1", "doc-a").await.unwrap();
    assert_eq!(store.count("t1").await.unwrap(), 2);
    store.delete_document("t1", "doc-c").await.unwrap();
    assert_eq!(
        store.count("t2").await.unwrap(),
        1,
        "another tenant's document is untouched"
    );

    // Wrong dimension is an error, not a panic.
    let mut bad = point("t1", "doc-x", 0, 0);
    bad.vector.pop();
    assert!(store.upsert(vec![bad]).await.is_err());
    assert!(
        store
            .search("t1", vec![1.0; DIM + 1], 1, None)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn edge_store_behaves_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = VectorConfig {
        data_dir: dir.path().to_path_buf(),
        ..VectorConfig::default()
    };
    behaves(VectorStore::open(&cfg, DIM).await.unwrap()).await;
    // Reopened from disk (WAL replay): the data is still there.
    let store = VectorStore::open(&cfg, DIM).await.unwrap();
    assert_eq!(store.count("t1").await.unwrap(), 2);
    assert_eq!(store.count("t2").await.unwrap(), 1);
}

#[tokio::test]
async fn remote_store_behaves() {
    let Some(url) = test_qdrant_url() else {
        println!("SKIPPED remote_store_behaves: set CONFAB_TEST_QDRANT_URL to a Qdrant gRPC URL");
        eprintln!("SKIPPED remote_store_behaves: set CONFAB_TEST_QDRANT_URL to a Qdrant gRPC URL");
        return;
    };
    let cfg = VectorConfig {
        backend: VectorBackend::Remote,
        url,
        collection: format!("confab_test_{}", uuid::Uuid::new_v4().simple()),
        ..VectorConfig::default()
    };
    behaves(VectorStore::open(&cfg, DIM).await.unwrap()).await;
}
