//! A Qdrant server or cluster over gRPC (qdrant-client): collection bootstrap, keyword
//! indexes on tenant and document id, per-call timeouts, retries with backoff.

use std::time::Duration;

use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, PointStruct, Query, QueryPointsBuilder,
    UpsertPointsBuilder, VectorParamsBuilder,
};
use qdrant_client::{Payload, Qdrant, QdrantError};

use super::{ChunkPoint, Hit, VectorError};
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

fn tenant_filter(tenant: &str, doc_id: Option<&str>) -> Filter {
    let mut must = vec![Condition::matches("tenant", tenant.to_string())];
    if let Some(d) = doc_id {
        must.push(Condition::matches("doc_id", d.to_string()));
    }
    Filter::must(must)
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
        if !exists {
            let dim = self.dim as u64;
            self.retry(|| {
                self.client.create_collection(
                    CreateCollectionBuilder::new(name.clone())
                        .vectors_config(VectorParamsBuilder::new(dim, Distance::Cosine)),
                )
            })
            .await?;
        }
        for field in ["tenant", "doc_id"] {
            self.retry(|| {
                self.client.create_field_index(
                    CreateFieldIndexCollectionBuilder::new(name.clone(), field, FieldType::Keyword)
                        .wait(true),
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
            list.push(PointStruct::new(p.id().to_string(), p.vector, payload));
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
                    .limit(k as u64)
                    .filter(tenant_filter(tenant, None))
                    .with_payload(true);
                if let Some(f) = floor {
                    q = q.score_threshold(f);
                }
                self.client.query(q)
            })
            .await?;
        Ok(resp
            .result
            .into_iter()
            .filter_map(|p| {
                Hit::from_payload(serde_json::Value::from(Payload::from(p.payload)), p.score)
            })
            .collect())
    }

    pub async fn delete_document(&self, tenant: &str, doc_id: &str) -> Result<(), VectorError> {
        self.retry(|| {
            self.client.delete_points(
                DeletePointsBuilder::new(self.collection.clone())
                    .points(tenant_filter(tenant, Some(doc_id)))
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
                        .filter(tenant_filter(tenant, None))
                        .exact(true),
                )
            })
            .await?;
        Ok(resp.result.map(|r| r.count as usize).unwrap_or(0))
    }
}
