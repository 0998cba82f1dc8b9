package httpapi

import (
	"strconv"

	"github.com/gin-gonic/gin"

	"github.com/tenantplane/tenantplane/catalog"
)

// PageQuery reads the paging parameters every list of both APIs takes:
// ?limit= (1 to catalog.MaxPageLimit; 0 when absent, the list's default)
// and ?cursor= (the previous page's next_cursor). A bad limit answers
// catalog.LimitMessage on every list.
func PageQuery(c *gin.Context) (limit int, cursor string, err error) {
	if raw := c.Query("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > catalog.MaxPageLimit {
			return 0, "", catalog.Errorf(catalog.CodeInvalid, catalog.LimitMessage)
		}
		limit = n
	}
	return limit, c.Query("cursor"), nil
}

// Page answers a page of a list: items under key, with next_cursor when
// more follow (omitted on the last page), and any other fields of extra.
func Page(key string, items any, next string, extra gin.H) gin.H {
	out := gin.H{key: items}
	for k, v := range extra {
		out[k] = v
	}
	if next != "" {
		out["next_cursor"] = next
	}
	return out
}
