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
	if len(r.Incremental) > 0 {
		p := plot.New()
		p.Title.Text = "incremental backup time by share changed"
		p.X.Label.Text = "percent of the image changed"
		p.Y.Label.Text = "seconds"
		byTool := map[string]plotter.XYs{}
		var order []string
		for _, x := range r.Incremental {
			if x.Error != "" {
				continue
			}
			if _, ok := byTool[x.Tool]; !ok {
				order = append(order, x.Tool)
			}
			byTool[x.Tool] = append(byTool[x.Tool], plotter.XY{X: x.ChangedPercent, Y: x.Seconds})
		}
		for i, t := range order {
			l, s, err := plotter.NewLinePoints(byTool[t])
			if err != nil {
				return nil, err
			}
			l.Color, s.Color, s.Shape = plotutil.Color(i), plotutil.Color(i), plotutil.Shape(i)
			p.Add(l, s)
			p.Legend.Add(t, l, s)
		}
		p.Legend.Top = true
		p.Y.Min = 0
		if err := p.Save(140*vg.Millimeter, 90*vg.Millimeter, filepath.Join(out, "incremental.svg")); err != nil {
			return nil, err
		}
		names = append(names, "incremental.svg")
	}
	if len(r.Parallel) > 0 {
		p := plot.New()
		p.Title.Text = "full backup throughput by parallelismDegree"
		p.X.Label.Text = "parallelismDegree"
		p.Y.Label.Text = "MiB/s"
		byTarget := map[string]plotter.XYs{}
		var order []string
		for _, x := range r.Parallel {
			if _, ok := byTarget[x.Target]; !ok {
				order = append(order, x.Target)
			}
			byTarget[x.Target] = append(byTarget[x.Target], plotter.XY{X: float64(x.Parallelism), Y: x.MiBps})
		}
		for i, t := range order {
			l, s, err := plotter.NewLinePoints(byTarget[t])
			if err != nil {
				return nil, err
			}
			l.Color, s.Color, s.Shape = plotutil.Color(i), plotutil.Color(i), plotutil.Shape(i)
			p.Add(l, s)
			p.Legend.Add(t, l, s)
		}
		p.Y.Min = 0
		if err := p.Save(120*vg.Millimeter, 80*vg.Millimeter, filepath.Join(out, "parallelism.svg")); err != nil {
			return nil, err
		}
		names = append(names, "parallelism.svg")
	}
	return names, nil
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	default:
		return fmt.Sprintf("%d MiB", n>>20)
	}
}
