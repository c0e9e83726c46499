//! Everything the workbench keeps on disk: the dataset, model files and the models by id,
//! caches of derived tensors, and the run history. Nothing here knows about the engine.

pub(crate) mod dataset;
pub(crate) mod files;
pub(crate) mod history;
pub(crate) mod model_file;
pub(crate) mod model_store;
pub(crate) mod retention;
pub(crate) mod shared_history;
pub(crate) mod tensor_cache;
