// Package chat turns a conversation into a model's prompt and the model's
// answer back into messages: it renders the Jinja chat template a GGUF
// carries (tokenizer.chat_template) with the messages and the tools, and
// reads tool calls out of the generated text in the syntax of the
// template's family (Hermes/Qwen, Llama 3, Mistral, or a generic JSON
// answer), as llama.cpp's common/chat does. It knows nothing of llama.cpp
// or HTTP.
package chat
