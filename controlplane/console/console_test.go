package console

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
)

// TestSafeNext keeps the redirect after sign-in on the console: anything
// else goes to the Fleet page.
func TestSafeNext(t *testing.T) {
	t.Parallel()
	for next, want := range map[string]string{
		"":                           "/console/",
		"/console/tenants?q=acme":    "/console/tenants?q=acme",
		"/console/tenants/acme":      "/console/tenants/acme",
		"https://evil.example/":      "/console/",
		"//evil.example/console/":    "/console/",
		"/\\evil.example/console/":   "/console/",
		"/admin/v1/servers":          "/console/",
		"javascript:alert(1)":        "/console/",
		"http://127.0.0.1/console/x": "/console/",
	} {
		require.Equal(t, want, safeNext(next), "next=%q", next)
	}
}

// TestDailyChart lays one bar per day out, scaled to the largest day, with a
// day of any usage always visible.
func TestDailyChart(t *testing.T) {
	t.Parallel()
	start := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	days := make([]catalog.DayUsage, 28)
	for i := range days {
		days[i] = catalog.DayUsage{Day: start.AddDate(0, 0, i)}
	}
	days[0].Quantity = 1
	days[9].Quantity = 5000
	days[27].Quantity = 2500
	ch := dailyChart("api_calls", days)
	require.Len(t, ch.Bars, 28)
	require.EqualValues(t, 5000, ch.Max)
	require.EqualValues(t, 7501, ch.Total)
	plot := chartHeight - chartTop - chartBottom
	require.Equal(t, plot, ch.Bars[9].H, "the largest day fills the plot")
	require.Equal(t, plot/2, ch.Bars[27].H)
	require.Equal(t, 1, ch.Bars[0].H, "a day with any usage shows")
	require.Zero(t, ch.Bars[1].H)
	for i, b := range ch.Bars {
		require.Equal(t, ch.BaseY, b.Y+b.H, "bar %d stands on the baseline", i)
		require.LessOrEqual(t, b.X+b.W, chartWidth, "bar %d fits", i)
	}
	require.Equal(t, "Feb 10: 5000 api_calls", ch.Bars[9].Title)
	var labels []string
	for _, tk := range ch.Ticks {
		labels = append(labels, tk.Label)
	}
	require.Equal(t, []string{"1", "5", "10", "15", "20", "25"}, labels)
	require.Empty(t, dailyChart("api_calls", nil).Bars)
}
