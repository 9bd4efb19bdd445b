//! qdrant-edge in-process. Every call blocks, so each runs on tokio's blocking pool.

use std::path::PathBuf;
use std::sync::Arc;

use qdrant_edge::{
    CountRequestBuilder, CreateIndex, Distance, EdgeConfigBuilder, EdgeShard,
    EdgeSparseVectorParamsBuilder, EdgeVectorParamsBuilder, FieldIndexOperations, Filter, JsonPath,
    Modifier, NamedQuery, Payload, PayloadFieldSchema, PayloadOps, PayloadSchemaType, PointId,
    PointInsertOperations, PointOperations, PointStruct, QueryEnum, QueryRequestBuilder,
    ScoredPoint, ScoringQuery, SetPayloadOp, SparseVector, UpdateOperation, Vector, VectorInternal,
    VectorStructInternal, Vectors, WithPayloadInterface, WithVector,
};

use super::{
    ChunkPoint, DENSE, Hit, SPARSE, Scope, SparseHit, SparseVec, VectorError, rest_filter,
};
use crate::config::VectorConfig;

/// Keyword-indexed payload fields (every search filters on tenant; deletes on document).
const KEYWORD_FIELDS: [&str; 2] = ["tenant", "doc_id"];

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

fn filter(tenant: &str, scope: Scope<'_>) -> Result<Filter, VectorError> {
    serde_json::from_value(rest_filter(tenant, scope)).map_err(err)
}

fn index(field: &str, schema: PayloadSchemaType) -> Result<UpdateOperation, VectorError> {
    let path: JsonPath = field
        .parse()
        .map_err(|_| err(format!("bad field {field}")))?;
    Ok(UpdateOperation::FieldIndexOperation(
        FieldIndexOperations::CreateIndex(CreateIndex {
            field_name: path,
            field_schema: Some(PayloadFieldSchema::FieldType(schema)),
        }),
    ))
}

/// Hits from scored points (points whose payload does not parse are skipped).
fn hits(points: Vec<ScoredPoint>) -> Vec<SparseHit> {
    points
        .into_iter()
        .filter_map(|p| {
            let dense = match p.vector {
                Some(VectorStructInternal::Named(mut m)) => match m.remove(DENSE) {
                    Some(VectorInternal::Dense(v)) => Some(v),
                    _ => None,
                },
                _ => None,
            };
            let payload = serde_json::Value::Object(p.payload?.0);
            Some(SparseHit {
                hit: Hit::from_payload(payload, p.score)?,
                dense,
            })
        })
        .collect()
}

impl EdgeStore {
    pub async fn open(cfg: &VectorConfig, dim: usize) -> Result<Self, VectorError> {
        // `chunks`, not the first layout's `vectors`: chunks now carry versions, a pending
        // flag and a sparse vector, which an old shard cannot hold.
        let dir: PathBuf = cfg.data_dir.join("chunks");
        if cfg.data_dir.join("vectors").exists() {
            tracing::warn!(
                dir = %cfg.data_dir.join("vectors").display(),
                "ignoring a vector store in the old layout; upload the documents again"
            );
        }
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
                        DENSE,
                        EdgeVectorParamsBuilder::new(dim, Distance::Cosine).build(),
                    )
                    .sparse_vector(
                        SPARSE,
                        EdgeSparseVectorParamsBuilder::new()
                            .modifier(Modifier::Idf)
                            .build(),
                    )
                    .build();
                EdgeShard::new(&dir, config)
            }
            .map_err(|e| VectorError::Unavailable(format!("cannot open {}: {e}", dir.display())))?;
            for field in KEYWORD_FIELDS {
                shard
                    .update(index(field, PayloadSchemaType::Keyword)?)
                    .map_err(err)?;
            }
            shard
                .update(index("pending", PayloadSchemaType::Bool)?)
                .map_err(err)?;
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
                    let sparse =
                        Vector::new_sparse(p.sparse.indices, p.sparse.values).map_err(err)?;
                    let vectors = Vectors::new_named([
                        (DENSE, Vector::new_dense(p.vector)),
                        (SPARSE, sparse),
                    ]);
                    Ok(PointStruct::new(id, vectors, payload).into())
                })
                .collect::<Result<_, VectorError>>()?;
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
        let filter = filter(tenant, Scope::Live)?;
        blocking(move || {
            let mut req = QueryRequestBuilder::new(k)
                .query(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                    query: VectorInternal::from(vector),
                    using: Some(DENSE.into()),
                })))
                .filter(filter)
                .with_payload(WithPayloadInterface::Bool(true));
            if let Some(f) = floor {
                req = req.score_threshold(f);
            }
            let points = shard.query(req.build()).map_err(err)?;
            Ok(hits(points).into_iter().map(|h| h.hit).collect())
        })
        .await
    }

    pub async fn search_sparse(
        &self,
        tenant: &str,
        query: SparseVec,
        k: usize,
    ) -> Result<Vec<SparseHit>, VectorError> {
        let shard = self.shard.clone();
        let filter = filter(tenant, Scope::Live)?;
        blocking(move || {
            let query = SparseVector::new(query.indices, query.values).map_err(err)?;
            let req = QueryRequestBuilder::new(k)
                .query(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                    query: VectorInternal::Sparse(query),
                    using: Some(SPARSE.into()),
                })))
                .filter(filter)
                .with_payload(WithPayloadInterface::Bool(true))
                .with_vector(WithVector::Selector(vec![DENSE.into()]));
            Ok(hits(shard.query(req.build()).map_err(err)?))
        })
        .await
    }

    pub async fn publish(
        &self,
        tenant: &str,
        doc_id: &str,
        version: u64,
    ) -> Result<(), VectorError> {
        let shard = self.shard.clone();
        let this = filter(tenant, Scope::Version(doc_id, version))?;
        let others = filter(tenant, Scope::OtherVersions(doc_id, version))?;
        blocking(move || {
            let mut live = serde_json::Map::new();
            live.insert("pending".into(), false.into());
            shard
                .update(UpdateOperation::PayloadOperation(PayloadOps::SetPayload(
                    SetPayloadOp {
                        payload: Payload::from(live),
                        points: None,
                        filter: Some(this),
                        key: None,
                    },
                )))
                .map_err(err)?;
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::DeletePointsByFilter(others),
                ))
                .map_err(err)
        })
        .await
    }

    pub(super) async fn delete(&self, tenant: &str, scope: Scope<'_>) -> Result<(), VectorError> {
        let shard = self.shard.clone();
        let filter = filter(tenant, scope)?;
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
        let filter = filter(tenant, Scope::Live)?;
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
