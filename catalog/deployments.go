package catalog

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Deployment is a model the queen keeps loaded: Min to Max workers, each
// on its own device, on the Hives named (none = any), clients asking for
// it by Name. The front door adds replicas up to Max while requests wait
// and lets idle ones above Min go.
type Deployment struct {
	Name       string
	Model      string // the name or reference the model is found by
	Min, Max   int    // replicas; a fixed number is Min = Max
	Hives      []string
	Device     string
	Embeddings bool
	Created    time.Time
}

// PutDeployment adds the deployment or replaces the one of that name.
func (q *Queen) PutDeployment(ctx context.Context, d Deployment) error {
	if d.Name == "" || d.Model == "" || d.Min < 1 || d.Max < d.Min {
		return fmt.Errorf("put deployment %q: %w: a name, a model and 1 <= min <= max replicas (min %d, max %d)", d.Name, ErrInvalid, d.Min, d.Max)
	}
	_, err := q.db.ExecContext(ctx, `INSERT INTO deployments (name, model, replicas, min_replicas, max_replicas, hives, device, embeddings, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET model = excluded.model, replicas = excluded.replicas, min_replicas = excluded.min_replicas,
			max_replicas = excluded.max_replicas, hives = excluded.hives, device = excluded.device, embeddings = excluded.embeddings`,
		d.Name, d.Model, d.Min, d.Min, d.Max, strings.Join(d.Hives, ","), d.Device, d.Embeddings, orNow(d.Created).UnixMilli())
	if err != nil {
		return fmt.Errorf("put deployment %s: %w", d.Name, err)
	}
	return nil
}

// RemoveDeployment removes a deployment, or returns ErrNotFound.
func (q *Queen) RemoveDeployment(ctx context.Context, name string) error {
	res, err := q.db.ExecContext(ctx, `DELETE FROM deployments WHERE name = ?`, name)
	if err == nil {
		err = notFoundIfNone(res)
	}
	if err != nil {
		return fmt.Errorf("remove deployment %s: %w", name, err)
	}
	return nil
}

// Deployments lists the deployments by name. One recorded before min and
// max existed reads as min = max = its replicas.
func (q *Queen) Deployments(ctx context.Context) ([]Deployment, error) {
	rows, err := q.db.QueryContext(ctx, `SELECT name, model, coalesce(nullif(min_replicas, 0), replicas),
		coalesce(nullif(max_replicas, 0), replicas), hives, device, embeddings, created_at FROM deployments ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list deployments: %w", err)
	}
	defer rows.Close()
	var out []Deployment
	for rows.Next() {
		var d Deployment
		var hives string
		var created int64
		if err := rows.Scan(&d.Name, &d.Model, &d.Min, &d.Max, &hives, &d.Device, &d.Embeddings, &created); err != nil {
			return nil, fmt.Errorf("list deployments: %w", err)
		}
		if hives != "" {
			d.Hives = strings.Split(hives, ",")
		}
		d.Created = time.UnixMilli(created)
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list deployments: %w", err)
	}
	return out, nil
}
