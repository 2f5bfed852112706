package catalog

import (
	"context"
	"errors"
	"testing"
)

func TestDeploymentsRoundTrip(t *testing.T) {
	q := newQueen(t)
	ctx := context.Background()
	if err := q.PutDeployment(ctx, Deployment{Name: "chat", Model: "hf:a/b", Min: 0, Max: 1}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("zero replicas: %v, want ErrInvalid", err)
	}
	if err := q.PutDeployment(ctx, Deployment{Name: "chat", Model: "hf:a/b", Min: 3, Max: 2}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("min above max: %v, want ErrInvalid", err)
	}
	if err := q.PutDeployment(ctx, Deployment{Name: "chat", Model: "hf:a/b", Min: 2, Max: 2, Hives: []string{"h1", "h2"}, Device: "gpu0"}); err != nil {
		t.Fatal(err)
	}
	if err := q.PutDeployment(ctx, Deployment{Name: "emb", Model: "e5", Min: 1, Max: 1, Embeddings: true}); err != nil {
		t.Fatal(err)
	}
	// Replacing keeps one row.
	if err := q.PutDeployment(ctx, Deployment{Name: "chat", Model: "hf:a/b", Min: 1, Max: 3, Hives: []string{"h1"}}); err != nil {
		t.Fatal(err)
	}
	ds, err := q.Deployments(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 || ds[0].Name != "chat" || ds[0].Min != 1 || ds[0].Max != 3 || len(ds[0].Hives) != 1 || ds[0].Device != "" || !ds[1].Embeddings || ds[1].Hives != nil {
		t.Fatalf("deployments = %+v", ds)
	}
	if err := q.RemoveDeployment(ctx, "chat"); err != nil {
		t.Fatal(err)
	}
	if err := q.RemoveDeployment(ctx, "chat"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second remove: %v, want ErrNotFound", err)
	}
}

// A deployment recorded before min and max existed (its row has replicas
// only) reads as min = max = replicas.
func TestDeploymentsBeforeScaling(t *testing.T) {
	q := newQueen(t)
	ctx := context.Background()
	if _, err := q.db.ExecContext(ctx, `INSERT INTO deployments (name, model, replicas, created_at) VALUES ('old', 'm', 3, 0)`); err != nil {
		t.Fatal(err)
	}
	ds, err := q.Deployments(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1 || ds[0].Min != 3 || ds[0].Max != 3 {
		t.Fatalf("deployments = %+v, want min 3 max 3", ds)
	}
}
