package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	tea "github.com/charmbracelet/bubbletea"
	"golang.org/x/term"

	"github.com/rbee-dev/rbee"
	"github.com/rbee-dev/rbee/queenapi"
)

type topCmd struct {
	Once     bool          `help:"Print one plain-text frame and exit (for scripts and tests)."`
	JSON     bool          `help:"With --once: print the queen's view as JSON (the API's field names)."`
	Interval time.Duration `default:"1s" help:"How often the view is refreshed."`
	Hive     string        `placeholder:"TEXT" help:"Show only hives whose name contains TEXT (and their devices and workers)."`
	Sort     string        `enum:"name,status,memory,busy" default:"name" help:"Order hives, devices and workers by: name, status, memory (used, most first), busy (most first)."`
}

func (c *topCmd) Help() string {
	return `A live view of the fleet: hives (status, last seen), devices (memory used and
free as bars), workers (model, slots busy, tokens/s) and each front-door
model's queue and replicas. It refreshes from what the queen already knows:
no hive is asked anything, so it costs the fleet nothing at any size.

On a terminal: ↑/↓, PgUp/PgDn, Home/End scroll; s changes the order; / filters
by hive name (Enter to apply, Esc to clear); q quits. In a pipe it prints a
plain frame every interval; --once prints one and exits.

Examples:
  rbee top
  rbee top --hive gpu --sort memory
  rbee top --once
  rbee top --once --json | jq '.workers[] | select(.in_flight > 0)'`
}

func (c *topCmd) Run(ctx context.Context, g *globals) error {
	if c.JSON && !c.Once {
		return rbee.Errorf(rbee.CodeBadRequest, "--json goes with --once (a live view is for a terminal)")
	}
	if c.Interval < 100*time.Millisecond {
		return rbee.Errorf(rbee.CodeBadRequest, "--interval %s: give at least 100ms", c.Interval)
	}
	qc, err := connect(ctx, g, quietNarrate)
	if err != nil {
		return err
	}
	fetch := func(ctx context.Context) (queenapi.Top, error) {
		t, err := qc.Top(ctx)
		if err != nil {
			return t, queenError(g, err)
		}
		return t, nil
	}
	view := topView{filter: c.Hive, sort: c.Sort}
	if c.Once {
		t, err := fetch(ctx)
		if err != nil {
			return err
		}
		if c.JSON {
			return printJSON(t)
		}
		_, err = io.WriteString(os.Stdout, strings.Join(view.frame(t, nil, 0), "\n")+"\n")
		return err
	}
	if !term.IsTerminal(int(os.Stdout.Fd())) {
		return c.plain(ctx, fetch, view)
	}
	m := &topModel{ctx: ctx, fetch: fetch, every: c.Interval, view: view}
	p := tea.NewProgram(m, tea.WithAltScreen(), tea.WithContext(ctx))
	if _, err := p.Run(); err != nil && !errors.Is(err, tea.ErrProgramKilled) {
		return fmt.Errorf("top: %w", err)
	}
	return m.err
}

// plain prints a frame every interval until ctx ends: for pipes and logs.
func (c *topCmd) plain(ctx context.Context, fetch func(context.Context) (queenapi.Top, error), view topView) error {
	var prev *queenapi.Top
	tick := time.NewTicker(c.Interval)
	defer tick.Stop()
	for {
		t, err := fetch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if _, err := io.WriteString(os.Stdout, strings.Join(view.frame(t, prev, 0), "\n")+"\n\n"); err != nil {
			return err
		}
		prev = &t
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// topView renders frames: which hives, in which order, how wide.
type topView struct {
	filter string
	sort   string
}

var topSorts = []string{"name", "status", "memory", "busy"}

// frame renders t as lines; prev (the look before) gives the token rates;
// width > 0 cuts lines to the terminal.
func (v topView) frame(t queenapi.Top, prev *queenapi.Top, width int) []string {
	hives := slices.Clone(t.Hives)
	hives = slices.DeleteFunc(hives, func(h queenapi.HiveInfo) bool { return v.filter != "" && !strings.Contains(h.Name, v.filter) })
	shown := map[string]bool{}
	for _, h := range hives {
		shown[h.Name] = true
	}
	online, used := 0, map[string]uint64{}
	for _, h := range hives {
		if h.Status == "online" {
			online++
		}
		for _, d := range h.Devices {
			used[h.Name] += d.TotalBytes - min(d.FreeBytes, d.TotalBytes)
		}
	}
	var workers []queenapi.TopWorker
	busy := map[string]int{}
	for _, w := range t.Workers {
		if shown[w.Hive] {
			workers = append(workers, w)
			busy[w.Hive] += w.InFlight
		}
	}
	switch v.sort {
	case "status":
		slices.SortStableFunc(hives, func(a, b queenapi.HiveInfo) int { return strings.Compare(a.Status, b.Status) })
	case "memory":
		slices.SortStableFunc(hives, func(a, b queenapi.HiveInfo) int { return cmp.Compare(used[b.Name], used[a.Name]) })
		slices.SortStableFunc(workers, func(a, b queenapi.TopWorker) int { return cmp.Compare(b.MemoryBytes, a.MemoryBytes) })
	case "busy":
		slices.SortStableFunc(hives, func(a, b queenapi.HiveInfo) int { return cmp.Compare(busy[b.Name], busy[a.Name]) })
		slices.SortStableFunc(workers, func(a, b queenapi.TopWorker) int { return cmp.Compare(b.InFlight, a.InFlight) })
	}

	ndev := 0
	for _, h := range hives {
		ndev += len(h.Devices)
	}
	title := fmt.Sprintf("rbee top  %s  %d hives (%d online), %d devices, %d workers, %d door models  sort: %s",
		t.At.Local().Format("15:04:05"), len(hives), online, ndev, len(workers), len(t.Models), v.sort)
	if v.filter != "" {
		title += fmt.Sprintf("  hive filter: %q", v.filter)
	}
	out := []string{title, ""}

	rows := [][]string{{"HIVE", "STATUS", "LAST SEEN", "DEVICES", "WORKERS", "REASON"}}
	nworkers := map[string]int{}
	for _, w := range workers {
		nworkers[w.Hive]++
	}
	for _, h := range hives {
		seen := "-"
		if !h.LastSeen.IsZero() {
			seen = ago(t.At.Sub(h.LastSeen))
		}
		rows = append(rows, []string{printable(h.Name), printable(h.Status), seen, fmt.Sprint(len(h.Devices)), fmt.Sprint(nworkers[h.Name]), printable(h.Reason)})
	}
	out = append(out, table(rows)...)

	rows = [][]string{{"DEVICE", "NAME", "MEMORY USED", "", "FREE", "GPU LOAD", "TEMP"}}
	for _, h := range hives {
		for _, d := range h.Devices {
			u := d.TotalBytes - min(d.FreeBytes, d.TotalBytes)
			load, temp := "-", "-"
			if d.Utilization != nil {
				load = fmt.Sprintf("%d%%", *d.Utilization)
			}
			if d.TemperatureC != nil {
				temp = fmt.Sprintf("%d°C", *d.TemperatureC)
			}
			rows = append(rows, []string{printable(h.Name) + "/" + printable(d.ID), printable(d.Name), bar(u, d.TotalBytes, 20),
				fmt.Sprintf("%s of %s", rbee.Bytes(u), rbee.Bytes(d.TotalBytes)), rbee.Bytes(d.FreeBytes), load, temp})
		}
	}
	out = append(append(out, ""), table(rows)...)

	rows = [][]string{{"WORKER", "MODEL", "DEVICE", "STATE", "SLOTS BUSY", "TOKENS/S", "SERVED", "MEMORY"}}
	for _, w := range workers {
		rate := "-"
		if prev != nil {
			for _, p := range prev.Workers {
				if p.Hive == w.Hive && p.ID == w.ID {
					if dt := t.At.Sub(prev.At).Seconds(); dt > 0 {
						rate = fmt.Sprintf("%.1f", float64(max(w.Generated-p.Generated, 0))/dt)
					}
				}
			}
		}
		mem := "-"
		if w.MemoryBytes > 0 {
			mem = rbee.Bytes(w.MemoryBytes)
		}
		model := printable(cmp.Or(baseName(w.Model), w.ModelID))
		if w.Embeddings {
			model += " (embeddings)"
		}
		rows = append(rows, []string{printable(w.Hive) + "/" + printable(w.ID), model, printable(w.Device), printable(w.State),
			fmt.Sprintf("%d/%d", w.InFlight, max(w.Slots, 1)), rate, fmt.Sprint(w.Served), mem})
	}
	out = append(append(out, ""), table(rows)...)

	rows = [][]string{{"DOOR MODEL", "WAITING", "IN FLIGHT", "REPLICAS", "READY", "SLOTS", "KEPT BY"}}
	for _, m := range t.Models {
		kept := "-"
		if m.Deployment {
			kept = "deployment"
		}
		name := printable(m.Model)
		if m.Embeddings {
			name += " (embeddings)"
		}
		rows = append(rows, []string{name, fmt.Sprint(m.Waiting), fmt.Sprint(m.InFlight), fmt.Sprint(m.Replicas), fmt.Sprint(m.Ready), fmt.Sprint(m.Slots), kept})
	}
	out = append(append(out, ""), table(rows)...)
	if len(t.Deployments) > 0 {
		rows = [][]string{{"DEPLOYMENT", "MODEL", "READY", "MIN-MAX", "LAST SCALE"}}
		for _, d := range t.Deployments {
			rows = append(rows, []string{printable(d.Name), printable(d.Model), fmt.Sprintf("%d/%d", d.Ready, d.Replicas), fmt.Sprintf("%d-%d", d.Min, d.Max), lastScale(d.LastScale)})
		}
		out = append(append(out, ""), table(rows)...)
	}
	if width > 0 {
		for i, l := range out {
			out[i] = cut(l, width)
		}
	}
	return out
}

// baseName is the last element of a path on a hive.
func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// table pads columns to their widest cell; the last column is not padded.
func table(rows [][]string) []string {
	var w []int
	for _, r := range rows {
		for i, c := range r {
			if i >= len(w) {
				w = append(w, 0)
			}
			w[i] = max(w[i], utf8.RuneCountInString(c))
		}
	}
	out := make([]string, 0, len(rows))
	for _, r := range rows {
		var b strings.Builder
		for i, c := range r {
			if i > 0 {
				b.WriteString("  ")
			}
			b.WriteString(c)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", w[i]-utf8.RuneCountInString(c)))
			}
		}
		out = append(out, strings.TrimRight(b.String(), " "))
	}
	return out
}

// bar draws used of total in width cells.
func bar(used, total uint64, width int) string {
	n := 0
	if total > 0 {
		n = int(float64(used) / float64(total) * float64(width))
	}
	n = min(max(n, 0), width)
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + "]"
}

// ago says how long ago, coarsely.
func ago(d time.Duration) string {
	switch {
	case d < time.Second:
		return "now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	default:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
}

// cut shortens s to width runes.
func cut(s string, width int) string {
	if utf8.RuneCountInString(s) <= width {
		return s
	}
	r := []rune(s)
	return string(r[:width])
}

// topModel is the live view on a terminal.
type topModel struct {
	ctx   context.Context
	fetch func(context.Context) (queenapi.Top, error)
	every time.Duration
	view  topView

	cur, prev *queenapi.Top
	err       error
	fetchErr  error
	width     int
	height    int
	offset    int
	editing   bool // typing a hive filter
	input     string
}

type topMsg struct {
	t   queenapi.Top
	err error
}

type tickMsg struct{}

func (m *topModel) load() tea.Msg {
	ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
	defer cancel()
	t, err := m.fetch(ctx)
	return topMsg{t: t, err: err}
}

func (m *topModel) Init() tea.Cmd { return m.load }

func (m *topModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case topMsg:
		if msg.err != nil {
			m.fetchErr = msg.err
			if m.cur == nil { // nothing to show: say why and stop
				m.err = msg.err
				return m, tea.Quit
			}
		} else {
			m.fetchErr = nil
			m.prev, m.cur = m.cur, &msg.t
		}
		return m, tea.Tick(m.every, func(time.Time) tea.Msg { return tickMsg{} })
	case tickMsg:
		return m, m.load
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case tea.KeyMsg:
		if m.editing {
			switch msg.Type {
			case tea.KeyEnter:
				m.editing, m.view.filter, m.offset = false, m.input, 0
			case tea.KeyEsc:
				m.editing, m.input, m.view.filter = false, "", ""
			case tea.KeyBackspace:
				if r := []rune(m.input); len(r) > 0 {
					m.input = string(r[:len(r)-1])
				}
			case tea.KeyRunes:
				m.input += string(msg.Runes)
			case tea.KeyCtrlC:
				return m, tea.Quit
			}
			return m, nil
		}
		switch msg.String() {
		case "q", "ctrl+c":
			return m, tea.Quit
		case "up", "k":
			m.offset = max(m.offset-1, 0)
		case "down", "j":
			m.offset++
		case "pgup":
			m.offset = max(m.offset-m.page(), 0)
		case "pgdown", " ":
			m.offset += m.page()
		case "home", "g":
			m.offset = 0
		case "end", "G":
			m.offset = 1 << 30
		case "s":
			i := slices.Index(topSorts, m.view.sort)
			m.view.sort = topSorts[(i+1)%len(topSorts)]
		case "/":
			m.editing, m.input = true, m.view.filter
		case "esc":
			m.view.filter = ""
		}
	}
	return m, nil
}

// page is how many lines of the frame fit under the status line.
func (m *topModel) page() int { return max(m.height-1, 1) }

func (m *topModel) View() string {
	if m.cur == nil {
		return "rbee top: asking the queen…"
	}
	lines := m.view.frame(*m.cur, m.prev, m.width)
	m.offset = min(m.offset, max(len(lines)-m.page(), 0))
	end := min(m.offset+m.page(), len(lines))
	status := "q quit  ↑↓ PgUp PgDn scroll  s sort  / filter by hive"
	switch {
	case m.editing:
		status = "hive filter: " + m.input + "_  (Enter apply, Esc clear)"
	case m.fetchErr != nil:
		status = "the queen did not answer: " + m.fetchErr.Error()
	}
	if m.width > 0 {
		status = cut(status, m.width)
	}
	return strings.Join(append(lines[m.offset:end], status), "\n")
}
