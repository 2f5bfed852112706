// Package scheduler decides where a job runs. The queen asks a Scheduler for
// a Plan: a warm worker that already holds the model, or the devices to try
// in order (the VRAM checker on each hive has the last word), with the
// reasons for every candidate so --explain can show why each one lost.
package scheduler
