//! qdrant-edge in-process. Every call blocks, so each runs on tokio's blocking pool.

use std::path::PathBuf;
use std::sync::Arc;

use qdrant_edge::{
    CountRequestBuilder, CreateIndex, Distance, EdgeConfigBuilder, EdgeShard,
    EdgeVectorParamsBuilder, FieldIndexOperations, Filter, JsonPath, NamedQuery,
    PayloadFieldSchema, PayloadSchemaType, PointId, PointInsertOperations, PointOperations,
    PointStruct, QueryEnum, QueryRequestBuilder, ScoringQuery, UpdateOperation, Vector,
    VectorInternal, Vectors, WithPayloadInterface,
};

use super::{ChunkPoint, Hit, VectorError, tenant_filter};
use crate::config::VectorConfig;

const VECTOR: &str = "dense";

pub struct EdgeStore {
    shard: Arc<EdgeShard>,
    dim: usize,
}

fn err(e: impl std::fmt::Display) -> VectorError {
    VectorError::Store(e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VectorError> + Send + 'static,
) -> Result<T, VectorError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VectorError::Store(format!("store task failed: {e}")))?
}

fn filter(tenant: &str, doc_id: Option<&str>) -> Result<Filter, VectorError> {
    serde_json::from_value(tenant_filter(tenant, doc_id)).map_err(err)
}

impl EdgeStore {
    pub async fn open(cfg: &VectorConfig, dim: usize) -> Result<Self, VectorError> {
        let dir: PathBuf = cfg.data_dir.join("vectors");
        let shard = blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| {
                VectorError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
            let exists = dir.join(qdrant_edge::WAL_PATH).exists();
            let shard = if exists {
                EdgeShard::load(&dir, None)
            } else {
                let config = EdgeConfigBuilder::new()
                    .vector(
                        VECTOR,
                        EdgeVectorParamsBuilder::new(dim, Distance::Cosine).build(),
                    )
                    .build();
                EdgeShard::new(&dir, config)
            }
            .map_err(|e| VectorError::Unavailable(format!("cannot open {}: {e}", dir.display())))?;
            for field in ["tenant", "doc_id"] {
                let path: JsonPath = field
                    .parse()
                    .map_err(|_| err(format!("bad field {field}")))?;
                shard
                    .update(UpdateOperation::FieldIndexOperation(
                        FieldIndexOperations::CreateIndex(CreateIndex {
                            field_name: path,
                            field_schema: Some(PayloadFieldSchema::FieldType(
                                PayloadSchemaType::Keyword,
                            )),
                        }),
                    ))
                    .map_err(err)?;
            }
            Ok(shard)
        })
        .await?;
        Ok(Self {
            shard: Arc::new(shard),
            dim,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub async fn upsert(&self, points: Vec<ChunkPoint>) -> Result<(), VectorError> {
        let shard = self.shard.clone();
        blocking(move || {
            let list = points
                .into_iter()
                .map(|p| {
                    // qdrant-edge has its own uuid crate version: convert through the bytes.
                    let id = PointId::Uuid(qdrant_edge::external::uuid::Uuid::from_bytes(
                        *p.id().as_bytes(),
                    ));
                    let payload = p.payload();
                    let vectors = Vectors::new_named([(VECTOR, Vector::new_dense(p.vector))]);
                    PointStruct::new(id, vectors, payload).into()
                })
                .collect();
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::UpsertPoints(PointInsertOperations::PointsList(list)),
                ))
                .map_err(err)
        })
        .await
    }

    pub async fn search(
        &self,
        tenant: &str,
        vector: Vec<f32>,
        k: usize,
        floor: Option<f32>,
    ) -> Result<Vec<Hit>, VectorError> {
        let shard = self.shard.clone();
        let filter = filter(tenant, None)?;
        blocking(move || {
            let mut req = QueryRequestBuilder::new(k)
                .query(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                    query: VectorInternal::from(vector),
                    using: Some(VECTOR.into()),
                })))
                .filter(filter)
                .with_payload(WithPayloadInterface::Bool(true));
            if let Some(f) = floor {
                req = req.score_threshold(f);
            }
            let points = shard.query(req.build()).map_err(err)?;
            Ok(points
                .into_iter()
                .filter_map(|p| {
                    let payload = serde_json::Value::Object(p.payload?.0);
                    Hit::from_payload(payload, p.score)
                })
                .collect())
        })
        .await
    }

    pub async fn delete_document(&self, tenant: &str, doc_id: &str) -> Result<(), VectorError> {
        let shard = self.shard.clone();
        let filter = filter(tenant, Some(doc_id))?;
        blocking(move || {
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::DeletePointsByFilter(filter),
                ))
                .map_err(err)
        })
        .await
    }

    pub async fn count(&self, tenant: &str) -> Result<usize, VectorError> {
        let shard = self.shard.clone();
        let filter = filter(tenant, None)?;
        blocking(move || {
            shard
                .count(
                    CountRequestBuilder::new()
                        .filter(filter)
                        .exact(true)
                        .build(),
                )
                .map_err(err)
        })
        .await
    }

    pub async fn flush(&self) -> Result<(), VectorError> {
        let shard = self.shard.clone();
        blocking(move || shard.flush().map_err(err)).await
    }

    /// Builds the HNSW index (slow; run when writes are quiet). Used by benchmarks.
    pub async fn optimize(&self) -> Result<bool, VectorError> {
        let shard = self.shard.clone();
        blocking(move || shard.optimize().map_err(err)).await
    }
}
