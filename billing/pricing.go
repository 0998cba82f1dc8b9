package billing

import (
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/tenantplane/tenantplane/catalog"
)

// microsPerMinor is how many price micro-units make one minor unit (cent).
const microsPerMinor = 1_000_000

// Charge is the amount, in minor units, that quantity units of a meter cost
// at a price: the units over the included quantity, times the unit price
// (UnitPriceMicros millionths of a minor unit per PerUnits units), computed
// exactly and rounded once to the nearest minor unit, halves rounded up. It
// is the one rounding rule of every line.
func Charge(quantity int64, p MeterPrice) (int64, error) {
	over := quantity - p.Included
	if over <= 0 || p.UnitPriceMicros == 0 {
		return 0, nil
	}
	per := max(p.PerUnits, 1)
	num := new(big.Int).Mul(big.NewInt(over), big.NewInt(p.UnitPriceMicros))
	den := new(big.Int).Mul(big.NewInt(per), big.NewInt(microsPerMinor))
	// floor((2*num + den) / (2*den)) = round half up of num/den, for num >= 0.
	num.Add(num.Lsh(num, 1), den)
	amount := num.Quo(num, den.Lsh(den, 1))
	if !amount.IsInt64() {
		return 0, catalog.Errorf(catalog.CodeInvalid, "%d %s at %d micro-units per %d is too large an amount", quantity, p.Meter, p.UnitPriceMicros, per)
	}
	return amount.Int64(), nil
}

// Price turns a tenant's inputs for a period into invoice lines, in order:
// the plan's base fee; each priced meter with usage in the period (a line
// even when the included quantity covers it, so that what was billed stays
// on record); then an adjustment for each meter and earlier invoiced period
// with usage that arrived after its invoice. An adjustment charges what the
// period's usage costs now, on the version that period was billed on, less
// what its lines already charged, so rounding never adds up across them.
func Price(in InvoiceInputs) ([]InvoiceLine, error) {
	v := in.Version
	month := monthName(in.Period)
	lines := []InvoiceLine{{
		Kind: LineBaseFee, Amount: v.BaseFee, PerUnits: 1,
		Description: fmt.Sprintf("%s plan, %s", titleCase(v.Plan), month),
	}}
	meters := slices.Clone(v.Meters)
	slices.SortFunc(meters, func(a, b MeterPrice) int { return strings.Compare(a.Meter, b.Meter) })
	for _, p := range meters {
		q := in.Usage[p.Meter]
		if q == 0 {
			continue
		}
		amount, err := Charge(q, p)
		if err != nil {
			return nil, err
		}
		lines = append(lines, InvoiceLine{
			Kind: LineUsage, Meter: p.Meter, UsagePeriod: in.Period, Quantity: q, Included: p.Included,
			UnitPriceMicros: p.UnitPriceMicros, PerUnits: max(p.PerUnits, 1), Amount: amount,
			Description: usageDescription(p, q, month, v.Currency),
		})
	}
	late := slices.Clone(in.Late)
	slices.SortFunc(late, func(a, b LateUsage) int {
		if c := strings.Compare(a.Period, b.Period); c != 0 {
			return c
		}
		return strings.Compare(a.Meter, b.Meter)
	})
	for _, l := range late {
		if l.Version.Currency != v.Currency {
			return nil, catalog.Errorf(catalog.CodeInvalid, "late %s usage of %s is priced in %s, the invoice in %s: bill it by hand",
				l.Meter, l.Period, strings.ToUpper(l.Version.Currency), strings.ToUpper(v.Currency))
		}
		p, ok := l.Version.Price(l.Meter)
		if !ok {
			p = MeterPrice{Meter: l.Meter, PerUnits: 1} // not priced then: on record, free
		}
		now, err := Charge(l.Total, p)
		if err != nil {
			return nil, err
		}
		units := l.Total - l.BilledQuantity
		lines = append(lines, InvoiceLine{
			Kind: LineAdjustment, Meter: l.Meter, UsagePeriod: l.Period, Quantity: units, Included: p.Included,
			UnitPriceMicros: p.UnitPriceMicros, PerUnits: max(p.PerUnits, 1), Amount: max(now-l.BilledAmount, 0),
			Description: fmt.Sprintf("Adjustment: %s %s of %s recorded after it was invoiced (%s in all)",
				humanize.Comma(units), l.Meter, monthName(l.Period), humanize.Comma(l.Total)),
		})
	}
	return lines, nil
}

func usageDescription(p MeterPrice, q int64, month, currency string) string {
	per := ""
	if p.PerUnits > 1 {
		per = " " + humanize.Comma(p.PerUnits)
	}
	included := ""
	if p.Included > 0 {
		included = fmt.Sprintf(", %s included", humanize.Comma(p.Included))
	}
	return fmt.Sprintf("%s, %s: %s%s, at %s per%s", p.Meter, month, humanize.Comma(q), included, UnitPrice(p.UnitPriceMicros, currency), per)
}

// zeroDecimal are the currencies Stripe counts in whole units.
var zeroDecimal = map[string]bool{
	"bif": true, "clp": true, "djf": true, "gnf": true, "jpy": true, "kmf": true, "krw": true, "mga": true,
	"pyg": true, "rwf": true, "ugx": true, "vnd": true, "vuv": true, "xaf": true, "xof": true, "xpf": true,
}

func exponent(currency string) int {
	if zeroDecimal[strings.ToLower(currency)] {
		return 0
	}
	return 2
}

// FormatAmount writes an amount of minor units in its currency: "$100.00",
// "€5.00", "1,000 JPY".
func FormatAmount(amount int64, currency string) string {
	sign := ""
	if amount < 0 {
		sign, amount = "-", -amount
	}
	exp := exponent(currency)
	scale := int64(1)
	for range exp {
		scale *= 10
	}
	s := humanize.Comma(amount / scale)
	if exp > 0 {
		s += fmt.Sprintf(".%0*d", exp, amount%scale)
	}
	switch strings.ToLower(currency) {
	case "usd":
		return sign + "$" + s
	case "eur":
		return sign + "€" + s
	case "gbp":
		return sign + "£" + s
	}
	return sign + s + " " + strings.ToUpper(currency)
}

// UnitPrice writes a price in micro-units exactly, with at least the
// currency's decimals: 1000000 micro-units of a cent is "$0.01", 10000 "$0.0001".
func UnitPrice(micros int64, currency string) string {
	exp := exponent(currency)
	digits := 6 + exp
	s := strconv.FormatInt(micros, 10)
	if len(s) <= digits {
		s = strings.Repeat("0", digits-len(s)+1) + s
	}
	whole, frac := s[:len(s)-digits], strings.TrimRight(s[len(s)-digits:], "0")
	for len(frac) < exp {
		frac += "0"
	}
	wholeN, _ := strconv.ParseInt(whole, 10, 64)
	out := humanize.Comma(wholeN)
	if frac != "" {
		out += "." + frac
	}
	switch strings.ToLower(currency) {
	case "usd":
		return "$" + out
	case "eur":
		return "€" + out
	case "gbp":
		return "£" + out
	}
	return out + " " + strings.ToUpper(currency)
}

// monthName writes a period (YYYY-MM) as "March 2026".
func monthName(period string) string {
	t, err := time.Parse("2006-01", period)
	if err != nil {
		return period
	}
	return t.Format("January 2006")
}

func titleCase(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
