//! The fields of a Hugging Face `config.json` that size a model: layers, widths, heads, KV
//! heads and head dimension (GQA), the MLA widths (DeepSeek), context, dtype, vocabulary and
//! quantization. Multimodal configs keep their language model's fields in `text_config`.

use serde::Serialize;
use serde_json::Value;

/// Largest `config.json` read (real ones are a few KiB).
pub const MAX_CONFIG: u64 = 4 << 20;

#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HfConfig {
    /// `architectures[0]`, e.g. `LlamaForCausalLM`.
    pub architecture: Option<String>,
    pub model_type: Option<String>,
    pub num_hidden_layers: Option<u64>,
    pub hidden_size: Option<u64>,
    pub num_attention_heads: Option<u64>,
    /// `num_key_value_heads`; absent in the file: the attention heads (no GQA).
    pub num_key_value_heads: Option<u64>,
    /// `head_dim`, else hidden size / attention heads.
    pub head_dim: Option<u64>,
    pub max_position_embeddings: Option<u64>,
    /// `torch_dtype` (or `dtype`, newer transformers).
    pub torch_dtype: Option<String>,
    pub vocab_size: Option<u64>,
    pub intermediate_size: Option<u64>,
    pub tie_word_embeddings: Option<bool>,
    /// MLA (DeepSeek V2/V3): the compressed KV width and the rotary part of a head.
    pub kv_lora_rank: Option<u64>,
    pub qk_rope_head_dim: Option<u64>,
    /// Routed experts of a mixture-of-experts model.
    pub num_experts: Option<u64>,
    /// `quantization_config.quant_method` (`awq`, `gptq`, `fp8`, `compressed-tensors`, ...).
    pub quantization: Option<String>,
    pub quantization_bits: Option<u64>,
}

fn u(v: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter().find_map(|k| v.get(*k).and_then(Value::as_u64))
}

fn s(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

impl HfConfig {
    /// The fields of a parsed `config.json`.
    pub fn from_json(root: &Value) -> HfConfig {
        // A multimodal model's language part.
        let text = root
            .get("text_config")
            .filter(|t| t.is_object() && u(root, &["num_hidden_layers", "n_layer"]).is_none())
            .unwrap_or(root);
        let heads = u(text, &["num_attention_heads", "n_head"]);
        let hidden = u(text, &["hidden_size", "n_embd", "d_model"]);
        let quant = root.get("quantization_config");
        HfConfig {
            architecture: root
                .get("architectures")
                .and_then(|a| a.get(0))
                .and_then(Value::as_str)
                .map(str::to_string),
            model_type: s(root, "model_type"),
            num_hidden_layers: u(text, &["num_hidden_layers", "n_layer", "num_layers"]),
            hidden_size: hidden,
            num_attention_heads: heads,
            num_key_value_heads: u(text, &["num_key_value_heads", "num_kv_heads"]).or(heads),
            head_dim: u(text, &["head_dim"]).or_else(|| match (hidden, heads) {
                (Some(h), Some(n)) if n > 0 => Some(h / n),
                _ => None,
            }),
            max_position_embeddings: u(
                text,
                &["max_position_embeddings", "n_positions", "max_seq_len"],
            ),
            torch_dtype: s(root, "torch_dtype")
                .or_else(|| s(root, "dtype"))
                .or_else(|| s(text, "torch_dtype")),
            vocab_size: u(text, &["vocab_size"]),
            intermediate_size: u(text, &["intermediate_size"]),
            tie_word_embeddings: root
                .get("tie_word_embeddings")
                .or_else(|| text.get("tie_word_embeddings"))
                .and_then(Value::as_bool),
            kv_lora_rank: u(text, &["kv_lora_rank"]),
            qk_rope_head_dim: u(text, &["qk_rope_head_dim"]),
            num_experts: u(
                text,
                &["num_local_experts", "n_routed_experts", "num_experts"],
            ),
            quantization: quant.and_then(|q| s(q, "quant_method")),
            quantization_bits: quant.and_then(|q| u(q, &["bits", "w_bit"])),
        }
    }

    /// Read a `config.json` inside `root` (at most [`MAX_CONFIG`] bytes).
    pub fn read(root: &std::path::Path, path: &std::path::Path) -> Result<HfConfig, String> {
        use std::io::Read;
        let f = super::open_inside(root, path)?;
        let mut text = Vec::new();
        f.take(MAX_CONFIG + 1)
            .read_to_end(&mut text)
            .map_err(|e| e.to_string())?;
        if text.len() as u64 > MAX_CONFIG {
            return Err(format!("larger than {} MiB", MAX_CONFIG >> 20));
        }
        let json: Value = serde_json::from_slice(&text).map_err(|e| format!("not JSON: {e}"))?;
        if !json.is_object() {
            return Err("not a JSON object".into());
        }
        Ok(HfConfig::from_json(&json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gqa_mla_and_multimodal_configs_are_read() {
        let llama = HfConfig::from_json(&json!({"architectures": ["LlamaForCausalLM"],
            "model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096,
            "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
            "torch_dtype": "bfloat16", "vocab_size": 128256, "intermediate_size": 14336}));
        assert_eq!(llama.architecture.as_deref(), Some("LlamaForCausalLM"));
        assert_eq!(
            (llama.num_key_value_heads, llama.head_dim),
            (Some(8), Some(128))
        );
        let deepseek = HfConfig::from_json(&json!({"architectures": ["DeepseekV3ForCausalLM"],
            "num_hidden_layers": 61, "hidden_size": 7168, "num_attention_heads": 128,
            "kv_lora_rank": 512, "qk_rope_head_dim": 64, "n_routed_experts": 256,
            "quantization_config": {"quant_method": "fp8"}}));
        assert_eq!(
            (deepseek.kv_lora_rank, deepseek.qk_rope_head_dim),
            (Some(512), Some(64))
        );
        assert_eq!(deepseek.num_experts, Some(256));
        assert_eq!(deepseek.quantization.as_deref(), Some("fp8"));
        // No num_key_value_heads: every head has its own KV.
        let mha = HfConfig::from_json(&json!({"num_hidden_layers": 2, "hidden_size": 64,
            "num_attention_heads": 4}));
        assert_eq!((mha.num_key_value_heads, mha.head_dim), (Some(4), Some(16)));
        let vl = HfConfig::from_json(
            &json!({"architectures": ["Qwen2VLForConditionalGeneration"],
            "torch_dtype": "bfloat16", "text_config": {"num_hidden_layers": 28, "hidden_size": 3584,
            "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768}}),
        );
        assert_eq!(
            (vl.num_hidden_layers, vl.num_key_value_heads),
            (Some(28), Some(4))
        );
        assert_eq!(vl.torch_dtype.as_deref(), Some("bfloat16"));
    }
}
