// Package supervisor starts, tracks and stops the hive's worker processes:
// rbee-workers and external OpenAI-speaking engines, one per model, device
// and type. It unloads idle workers, and hands its workers over to the next
// agent (an upgrade) instead of stopping them.
package supervisor
