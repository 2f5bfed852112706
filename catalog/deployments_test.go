package catalog

import (
	"context"
	"errors"
	"testing"
)

func TestDeploymentsRoundTrip(t *testing.T) {
	q := newQueen(t)
	ctx := context.Background()
	if err := q.PutDeployment(ctx, Deployment{Name: "chat", Model: "hf:a/b", Replicas: 0}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("zero replicas: %v, want ErrInvalid", err)
	}
	if err := q.PutDeployment(ctx, Deployment{Name: "chat", Model: "hf:a/b", Replicas: 2, Hives: []string{"h1", "h2"}, Device: "gpu0"}); err != nil {
		t.Fatal(err)
	}
	if err := q.PutDeployment(ctx, Deployment{Name: "emb", Model: "e5", Replicas: 1, Embeddings: true}); err != nil {
		t.Fatal(err)
	}
	// Replacing keeps one row.
	if err := q.PutDeployment(ctx, Deployment{Name: "chat", Model: "hf:a/b", Replicas: 3, Hives: []string{"h1"}}); err != nil {
		t.Fatal(err)
	}
	ds, err := q.Deployments(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 || ds[0].Name != "chat" || ds[0].Replicas != 3 || len(ds[0].Hives) != 1 || ds[0].Device != "" || !ds[1].Embeddings || ds[1].Hives != nil {
		t.Fatalf("deployments = %+v", ds)
	}
	if err := q.RemoveDeployment(ctx, "chat"); err != nil {
		t.Fatal(err)
	}
	if err := q.RemoveDeployment(ctx, "chat"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second remove: %v, want ErrNotFound", err)
	}
}
