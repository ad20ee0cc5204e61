package bench

import (
	"fmt"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// writeCharts draws the report's charts as SVG files in out and returns
// their names: full backup and restore time per tool, and throughput
// against parallelismDegree per target.
func writeCharts(r *AllReport, out string) ([]string, error) {
	var names []string
	bars := func(name, title, ylabel string, labels []string, values []float64) error {
		if len(values) == 0 {
			return nil
		}
		p := plot.New()
		p.Title.Text = title
		p.Y.Label.Text = ylabel
		b, err := plotter.NewBarChart(plotter.Values(values), vg.Points(28))
		if err != nil {
			return err
		}
		p.Add(b)
		p.NominalX(labels...)
		if err := p.Save(vg.Length(max(80, 30+25*len(values)))*vg.Millimeter, 80*vg.Millimeter, filepath.Join(out, name)); err != nil {
			return err
		}
		names = append(names, name)
		return nil
	}
	var labels []string
	var secs []float64
	for _, t := range r.Backup.Runs {
		if t.Error == "" {
			labels, secs = append(labels, t.Tool), append(secs, t.Seconds)
		}
	}
	if err := bars("backup.svg", fmt.Sprintf("full backup of %s", humanSize(r.Size)), "seconds", labels, secs); err != nil {
		return nil, err
	}
	labels, secs = nil, nil
	for _, x := range r.Restore {
		if x.Error == "" {
			labels, secs = append(labels, x.Tool+" "+x.Mode), append(secs, x.Seconds.Median)
		}
	}
	if err := bars("restore.svg", fmt.Sprintf("restore of %s", humanSize(r.Size)), "seconds", labels, secs); err != nil {
		return nil, err
	}
	var inc series
	for _, x := range r.Incremental {
		if x.Error == "" {
			inc.add(x.Tool, x.ChangedPercent, x.Seconds)
		}
	}
	if err := inc.save(filepath.Join(out, "incremental.svg"), "incremental backup time by share changed",
		"percent of the image changed", "seconds", true, 140, 90); err != nil {
		return nil, err
	}
	if len(inc.order) > 0 {
		names = append(names, "incremental.svg")
	}
	var par series
	for _, x := range r.Parallel {
		par.add(x.Target, float64(x.Parallelism), x.MiBps)
	}
	if err := par.save(filepath.Join(out, "parallelism.svg"), "full backup throughput by parallelismDegree",
		"parallelismDegree", "MiB/s", false, 120, 80); err != nil {
		return nil, err
	}
	if len(par.order) > 0 {
		names = append(names, "parallelism.svg")
	}
	return names, nil
}

// series is the lines of a chart, by name, in the order first seen.
type series struct {
	order []string
	xys   map[string]plotter.XYs
}

func (s *series) add(name string, x, y float64) {
	if s.xys == nil {
		s.xys = map[string]plotter.XYs{}
	}
	if _, ok := s.xys[name]; !ok {
		s.order = append(s.order, name)
	}
	s.xys[name] = append(s.xys[name], plotter.XY{X: x, Y: y})
}

// save draws the lines, each with its points and a legend entry, to path
// (w x h millimetres); an empty series draws nothing.
func (s *series) save(path, title, xlabel, ylabel string, legendTop bool, w, h vg.Length) error {
	if len(s.order) == 0 {
		return nil
	}
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xlabel
	p.Y.Label.Text = ylabel
	for i, name := range s.order {
		l, pts, err := plotter.NewLinePoints(s.xys[name])
		if err != nil {
			return err
		}
		l.Color, pts.Color, pts.Shape = plotutil.Color(i), plotutil.Color(i), plotutil.Shape(i)
		p.Add(l, pts)
		p.Legend.Add(name, l, pts)
	}
	p.Legend.Top = legendTop
	p.Y.Min = 0
	return p.Save(w*vg.Millimeter, h*vg.Millimeter, path)
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	default:
		return fmt.Sprintf("%d MiB", n>>20)
	}
}
