//! The documented chat templates of the supported families, used when a checkpoint carries none
//! (the Gemma 3 270M GGUF has no `tokenizer.chat_template`). Each is the template the family's
//! instruction-tuned checkpoints ship in `tokenizer_config.json`.

use crate::family::Family;

/// Gemma 3 (`google/gemma-3-4b-it`, `tokenizer_config.json` `chat_template`): turns as
/// `<start_of_turn>user\n…<end_of_turn>\n`, the assistant called `model`, a system message
/// folded into the first user turn.
const GEMMA3: &str = include_str!("templates/gemma3.jinja");

/// ChatML, the format of Qwen2/2.5/3's chat models (`<|im_start|>role\n…<|im_end|>\n`), without
/// the tool-calling and default-system-prompt parts of their full templates.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Mistral-7B-Instruct-v0.1's `[INST] … [/INST]` template.
const MISTRAL: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

/// The documented chat template of `family`, or `None` where the family has no single one
/// (Llama-architecture models differ: Llama 2, Llama 3 and SmolLM2 each have their own).
pub fn family_chat_template(family: Family) -> Option<&'static str> {
    match family {
        Family::Gemma3 => Some(GEMMA3),
        Family::Qwen2 | Family::Qwen3 => Some(CHATML),
        Family::Mistral => Some(MISTRAL),
        Family::Llama => None,
    }
}
