//! Loading the ONNX model and ONNX Runtime from local files, with errors instead of panics.

use std::path::Path;
use std::sync::OnceLock;

use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};

use super::EmbedError;
use crate::config::EmbeddingConfig;

static ORT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads the ONNX Runtime library once per process. fastembed would panic on a missing or
/// too old library; `ort::init_from` reports it as an error instead.
/// The environment is process-wide: ONNX Runtime refuses a second one, so every model
/// instance gets this one.
fn init_ort(dylib: &Path) -> Result<ort::environment::Environment, EmbedError> {
    ORT.get_or_init(|| {
        if !dylib.is_file() {
            return Err(format!(
                "ONNX Runtime library {} not found; run scripts/fetch-models.sh or set embedding.ort_dylib",
                dylib.display()
            ));
        }
        let builder = ort::init_from(dylib)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", dylib.display()))?;
        builder
            .with_name("confab")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
    })
    .clone()
    .map_err(EmbedError::Assets)
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, EmbedError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|e| {
        EmbedError::Assets(format!(
            "cannot read {} ({e}); run scripts/fetch-models.sh or set embedding.model_dir",
            path.display()
        ))
    })
}

/// The model's files, read once and shared by every worker.
#[derive(Clone)]
pub struct ModelFiles {
    env: ort::environment::Environment,
    onnx: Vec<u8>,
    tokenizer: TokenizerFiles,
}

impl ModelFiles {
    pub fn read(cfg: &EmbeddingConfig) -> Result<Self, EmbedError> {
        let env = init_ort(&cfg.ort_dylib)?;
        let dir = &cfg.model_dir;
        Ok(Self {
            env,
            onnx: read(dir, "model.onnx")?,
            tokenizer: TokenizerFiles {
                tokenizer_file: read(dir, "tokenizer.json")?,
                config_file: read(dir, "config.json")?,
                special_tokens_map_file: read(dir, "special_tokens_map.json")?,
                tokenizer_config_file: read(dir, "tokenizer_config.json")?,
            },
        })
    }

    /// One model instance with its own ONNX session. Mean pooling: fastembed defaults
    /// user-defined models to CLS pooling, which is wrong for MiniLM.
    pub fn instance(&self, cfg: &EmbeddingConfig) -> Result<TextEmbedding, EmbedError> {
        let model = UserDefinedEmbeddingModel::new(self.onnx.clone(), self.tokenizer.clone())
            .with_pooling(Pooling::Mean);
        let mut opts = InitOptionsUserDefined::new()
            .with_environment(self.env.clone())
            .with_max_length(cfg.max_length)
            .with_intra_threads(cfg.intra_threads)
            // Spinning threads burn the few cores this shares with the async runtime.
            .with_session_config("session.intra_op.allow_spinning", "0")
            .with_session_config("session.inter_op.allow_spinning", "0");
        opts = with_provider(opts, cfg)?;
        TextEmbedding::try_new_from_user_defined(model, opts)
            .map_err(|e| EmbedError::Assets(format!("cannot load the embedding model: {e}")))
    }
}

#[cfg(feature = "gpu")]
fn with_provider(
    opts: InitOptionsUserDefined,
    cfg: &EmbeddingConfig,
) -> Result<InitOptionsUserDefined, EmbedError> {
    if !cfg.gpu {
        tracing::info!("embedding execution provider: CPU");
        return Ok(opts);
    }
    tracing::info!("embedding execution provider: CUDA (error_on_failure)");
    Ok(opts.with_execution_providers(vec![ort::ep::CUDA::default().build().error_on_failure()]))
}

#[cfg(not(feature = "gpu"))]
fn with_provider(
    opts: InitOptionsUserDefined,
    _cfg: &EmbeddingConfig,
) -> Result<InitOptionsUserDefined, EmbedError> {
    tracing::info!("embedding execution provider: CPU");
    Ok(opts)
}
