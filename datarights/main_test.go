package datarights_test

import (
	"testing"

	"github.com/tenantplane/tenantplane/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }
