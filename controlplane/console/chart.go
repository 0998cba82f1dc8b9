package console

import (
	"fmt"

	"github.com/tenantplane/tenantplane/catalog"
)

// chart is a bar chart of a meter's usage per day, drawn by the template as
// inline SVG: no script and no image request.
type chart struct {
	Meter         string
	Width, Height int
	Bars          []bar
	Ticks         []tick // labels under the days
	Max           int64
	Total         int64
	BaseY         int // the bars' baseline
}

type bar struct {
	X, Y, W, H int
	Title      string
}

type tick struct {
	X     int
	Label string
}

const (
	chartWidth  = 720
	chartHeight = 200
	chartLeft   = 8
	chartTop    = 20
	chartBottom = 24
)

// dailyChart lays out one bar per day, scaled to the largest day.
func dailyChart(meter string, days []catalog.DayUsage) chart {
	ch := chart{Meter: meter, Width: chartWidth, Height: chartHeight, BaseY: chartHeight - chartBottom}
	for _, d := range days {
		ch.Max = max(ch.Max, d.Quantity)
		ch.Total += d.Quantity
	}
	if len(days) == 0 {
		return ch
	}
	slot := (chartWidth - 2*chartLeft) / len(days)
	plot := chartHeight - chartTop - chartBottom
	for i, d := range days {
		h := 0
		if ch.Max > 0 {
			h = int(d.Quantity * int64(plot) / ch.Max)
		}
		if d.Quantity > 0 && h == 0 {
			h = 1 // a day with any usage shows
		}
		x := chartLeft + i*slot
		ch.Bars = append(ch.Bars, bar{X: x + 1, Y: ch.BaseY - h, W: max(slot-2, 1), H: h,
			Title: fmt.Sprintf("%s: %d %s", d.Day.UTC().Format("Jan 2"), d.Quantity, meter)})
		if day := d.Day.UTC().Day(); day == 1 || day%5 == 0 {
			ch.Ticks = append(ch.Ticks, tick{X: x + slot/2, Label: fmt.Sprint(day)})
		}
	}
	return ch
}
