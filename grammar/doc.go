// Package grammar writes the GBNF grammars (llama.cpp's grammar format) that
// constrain sampling to JSON: one for any JSON object (OpenAI's JSON mode)
// and one for the documents a JSON Schema describes (structured outputs).
// A schema keyword it cannot turn into grammar is refused with a
// *SchemaError naming it, never dropped: an answer that ignored a part of
// the schema would not be what the caller asked for.
package grammar
