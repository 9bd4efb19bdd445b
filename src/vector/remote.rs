//! A Qdrant server or cluster over gRPC (qdrant-client): collection bootstrap, keyword
//! indexes on tenant and document id, per-call timeouts, retries with backoff.

use std::time::Duration;

use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, Modifier, NamedVectors, PointStruct, Query,
    QueryPointsBuilder, ScoredPoint, SetPayloadPointsBuilder, SparseVectorParamsBuilder,
    SparseVectorsConfigBuilder, UpsertPointsBuilder, Vector, VectorInput, VectorParamsBuilder,
    VectorsConfigBuilder, vector_output,
};
use qdrant_client::{Payload, Qdrant, QdrantError};

use super::{ChunkPoint, DENSE, Hit, SPARSE, Scope, SparseHit, SparseVec, VectorError};
use crate::config::VectorConfig;

pub struct RemoteStore {
    client: Qdrant,
    collection: String,
    dim: usize,
    retries: u32,
}

fn unavailable(e: QdrantError) -> VectorError {
    VectorError::Unavailable(e.to_string())
}

/// The same selection as `rest_filter`, in the gRPC types.
fn filter(tenant: &str, scope: Scope<'_>) -> Filter {
    let mut must = vec![Condition::matches("tenant", tenant.to_string())];
    let mut must_not = Vec::new();
    match scope {
        Scope::Live => must_not.push(Condition::matches("pending", true)),
        Scope::Document(d) => must.push(Condition::matches("doc_id", d.to_string())),
        Scope::Version(d, v) => {
            must.push(Condition::matches("doc_id", d.to_string()));
            must.push(Condition::matches("version", v as i64));
        }
        Scope::OtherVersions(d, v) => {
            must.push(Condition::matches("doc_id", d.to_string()));
            must_not.push(Condition::matches("version", v as i64));
        }
    }
    Filter {
        must,
        must_not,
        ..Default::default()
    }
}

fn to_hits(points: Vec<ScoredPoint>) -> Vec<SparseHit> {
    points
        .into_iter()
        .filter_map(|p| {
            let dense = p
                .vectors
                .as_ref()
                .and_then(|v| v.get_vector_by_name(DENSE))
                .and_then(|v| match v {
                    vector_output::Vector::Dense(d) => Some(d.data),
                    _ => None,
                });
            let hit =
                Hit::from_payload(serde_json::Value::from(Payload::from(p.payload)), p.score)?;
            Some(SparseHit { hit, dense })
        })
        .collect()
}

impl RemoteStore {
    pub async fn open(cfg: &VectorConfig, dim: usize) -> Result<Self, VectorError> {
        let mut builder = Qdrant::from_url(&cfg.url)
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms))
            // The check blocks and prints to stdout; a failing call reports the same problem.
            .skip_compatibility_check();
        if !cfg.api_key.is_empty() {
            builder = builder.api_key(cfg.api_key.expose().to_string());
        }
        let client = builder.build().map_err(unavailable)?;
        let store = Self {
            client,
            collection: cfg.collection.clone(),
            dim,
            retries: cfg.retries,
        };
        store.bootstrap().await?;
        Ok(store)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    async fn bootstrap(&self) -> Result<(), VectorError> {
        let name = self.collection.clone();
        let exists = self
            .retry(|| self.client.collection_exists(name.clone()))
            .await?;
        if exists {
            let info = self
                .retry(|| self.client.collection_info(name.clone()))
                .await?;
            let has_sparse = info
                .result
                .and_then(|i| i.config)
                .and_then(|c| c.params)
                .and_then(|p| p.sparse_vectors_config)
                .is_some_and(|s| s.map.contains_key(SPARSE));
            if !has_sparse {
                return Err(VectorError::Unavailable(format!(
                    "collection {name} has no sparse vector {SPARSE:?} (made by an older confab): \
                     set vector.collection to a new name and upload the documents again"
                )));
            }
        } else {
            let dim = self.dim as u64;
            self.retry(|| {
                let mut dense = VectorsConfigBuilder::default();
                dense.add_named_vector_params(
                    DENSE,
                    VectorParamsBuilder::new(dim, Distance::Cosine),
                );
                let mut sparse = SparseVectorsConfigBuilder::default();
                sparse.add_named_vector_params(
                    SPARSE,
                    SparseVectorParamsBuilder::default().modifier(Modifier::Idf),
                );
                self.client.create_collection(
                    CreateCollectionBuilder::new(name.clone())
                        .vectors_config(dense)
                        .sparse_vectors_config(sparse),
                )
            })
            .await?;
        }
        for (field, kind) in [
            ("tenant", FieldType::Keyword),
            ("doc_id", FieldType::Keyword),
            ("pending", FieldType::Bool),
        ] {
            self.retry(|| {
                self.client.create_field_index(
                    CreateFieldIndexCollectionBuilder::new(name.clone(), field, kind).wait(true),
                )
            })
            .await?;
        }
        Ok(())
    }

    /// Retries transient failures with exponential backoff.
    async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, VectorError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, QdrantError>>,
    {
        let mut attempt = 0;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < self.retries => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "qdrant call failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    pub async fn upsert(&self, points: Vec<ChunkPoint>) -> Result<(), VectorError> {
        let mut list = Vec::with_capacity(points.len());
        for p in points {
            let payload =
                Payload::try_from(p.payload()).map_err(|e| VectorError::Store(e.to_string()))?;
            let vectors = NamedVectors::default()
                .add_vector(DENSE, Vector::new_dense(p.vector.clone()))
                .add_vector(
                    SPARSE,
                    Vector::new_sparse(p.sparse.indices.clone(), p.sparse.values.clone()),
                );
            list.push(PointStruct::new(p.id().to_string(), vectors, payload));
        }
        self.retry(|| {
            self.client.upsert_points(
                UpsertPointsBuilder::new(self.collection.clone(), list.clone()).wait(true),
            )
        })
        .await
        .map(|_| ())
    }

    pub async fn search(
        &self,
        tenant: &str,
        vector: Vec<f32>,
        k: usize,
        floor: Option<f32>,
    ) -> Result<Vec<Hit>, VectorError> {
        let resp = self
            .retry(|| {
                let mut q = QueryPointsBuilder::new(self.collection.clone())
                    .query(Query::new_nearest(vector.clone()))
                    .using(DENSE)
                    .limit(k as u64)
                    .filter(filter(tenant, Scope::Live))
                    .with_payload(true);
                if let Some(f) = floor {
                    q = q.score_threshold(f);
                }
                self.client.query(q)
            })
            .await?;
        Ok(to_hits(resp.result).into_iter().map(|h| h.hit).collect())
    }

    pub async fn search_sparse(
        &self,
        tenant: &str,
        query: SparseVec,
        k: usize,
    ) -> Result<Vec<SparseHit>, VectorError> {
        let resp = self
            .retry(|| {
                self.client.query(
                    QueryPointsBuilder::new(self.collection.clone())
                        .query(Query::new_nearest(VectorInput::new_sparse(
                            query.indices.clone(),
                            query.values.clone(),
                        )))
                        .using(SPARSE)
                        .limit(k as u64)
                        .filter(filter(tenant, Scope::Live))
                        .with_payload(true)
                        .with_vectors(qdrant_client::qdrant::VectorsSelector::from(vec![
                            DENSE.to_string(),
                        ])),
                )
            })
            .await?;
        Ok(to_hits(resp.result))
    }

    pub async fn publish(
        &self,
        tenant: &str,
        doc_id: &str,
        version: u64,
    ) -> Result<(), VectorError> {
        let live = Payload::try_from(serde_json::json!({"pending": false}))
            .map_err(|e| VectorError::Store(e.to_string()))?;
        self.retry(|| {
            self.client.set_payload(
                SetPayloadPointsBuilder::new(self.collection.clone(), live.clone())
                    .points_selector(filter(tenant, Scope::Version(doc_id, version)))
                    .wait(true),
            )
        })
        .await?;
        self.delete(tenant, Scope::OtherVersions(doc_id, version))
            .await
    }

    pub(super) async fn delete(&self, tenant: &str, scope: Scope<'_>) -> Result<(), VectorError> {
        self.retry(|| {
            self.client.delete_points(
                DeletePointsBuilder::new(self.collection.clone())
                    .points(filter(tenant, scope))
                    .wait(true),
            )
        })
        .await
        .map(|_| ())
    }

    pub async fn count(&self, tenant: &str) -> Result<usize, VectorError> {
        let resp = self
            .retry(|| {
                self.client.count(
                    CountPointsBuilder::new(self.collection.clone())
                        .filter(filter(tenant, Scope::Live))
                        .exact(true),
                )
            })
            .await?;
        Ok(resp.result.map(|r| r.count as usize).unwrap_or(0))
    }
}
