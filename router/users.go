package router

import (
	"encoding/base64"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/httpapi"
)

// The reference product resource: users, in the tenant's own database or
// its pool database (table from the tenant migrations). Every query runs on
// the request's tenant-scoped handle (DB): another tenant's rows are not
// reachable, whatever id is asked for. Each query also names the tenant
// (tenant_id = $n), as every tenant table's primary key and indexes begin
// with it: the same SQL serves both tiers.

func (r *Router) userRoutes(v1 *gin.RouterGroup) {
	r.route(v1, http.MethodGet, "/users", catalog.ScopeUsersRead, listUsers)
	r.route(v1, http.MethodPost, "/users", catalog.ScopeUsersWrite, createUser)
	r.route(v1, http.MethodGet, "/users/:id", catalog.ScopeUsersRead, getUser)
	r.route(v1, http.MethodPatch, "/users/:id", catalog.ScopeUsersWrite, updateUser)
	r.route(v1, http.MethodDelete, "/users/:id", catalog.ScopeUsersWrite, deleteUser)
}

// User is a row of the tenant's users table.
type User struct {
	ID        string    `json:"id"`
	Email     string    `json:"email"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

const userColumns = `id, email, name, created_at, updated_at`

// listUsersSQL is a page of users after the cursor ($1, $2), $3 at most.
const listUsersSQL = `SELECT ` + userColumns + ` FROM users WHERE tenant_id = $4 AND (created_at, id) > ($1, $2::uuid)
	ORDER BY created_at, id LIMIT $3`

func scanUser(row pgx.Row) (u User, err error) {
	err = row.Scan(&u.ID, &u.Email, &u.Name, &u.CreatedAt, &u.UpdatedAt)
	return u, err
}

// userInput is the body of POST and PATCH; PATCH leaves nil fields alone.
type userInput struct {
	Email *string `json:"email"`
	Name  *string `json:"name"`
}

var emailRE = regexp.MustCompile(`^[^@\s]{1,64}@[^@\s]{1,255}$`)

func (in userInput) validate(create bool) error {
	if create && in.Email == nil {
		return catalog.Errorf(catalog.CodeInvalid, "email is required")
	}
	for _, v := range []*string{in.Email, in.Name} {
		if v != nil && !catalog.ValidText(*v) {
			return catalog.Errorf(catalog.CodeInvalid, "text must be valid UTF-8 without NUL characters")
		}
	}
	if in.Email != nil && !emailRE.MatchString(*in.Email) {
		return catalog.Errorf(catalog.CodeInvalid, "email %q is not an email address", *in.Email)
	}
	// Characters, as the column's CHECK (length(name) <= 200) counts them.
	if in.Name != nil && utf8.RuneCountInString(*in.Name) > 200 {
		return catalog.Errorf(catalog.CodeInvalid, "name is longer than 200 characters")
	}
	if !create && in.Email == nil && in.Name == nil {
		return catalog.Errorf(catalog.CodeInvalid, "nothing to change: send email and/or name")
	}
	return nil
}

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// userAndDB reads the :id parameter (a malformed one is simply not found)
// and the tenant's connection; on failure it has answered already.
func userAndDB(c *gin.Context) (string, *pgxpool.Conn, bool) {
	id := c.Param("id")
	if !uuidRE.MatchString(id) {
		httpapi.Fail(c, catalog.CodeNotFound, "user %q not found", id)
		return "", nil, false
	}
	db, err := DB(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return "", nil, false
	}
	return id, db, true
}

func createUser(c *gin.Context) {
	var in userInput
	if err := httpapi.BindJSON(c, &in); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if err := in.validate(true); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	db, err := DB(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	name := ""
	if in.Name != nil {
		name = *in.Name
	}
	u, err := scanUser(db.QueryRow(c, `INSERT INTO users (tenant_id, email, name) VALUES ($3, $1, $2) RETURNING `+userColumns, *in.Email, name, Tenant(c).ID))
	if err != nil {
		httpapi.WriteError(c, dbError(err, "user"))
		return
	}
	c.JSON(http.StatusCreated, u)
}

func getUser(c *gin.Context) {
	id, db, ok := userAndDB(c)
	if !ok {
		return
	}
	u, err := scanUser(db.QueryRow(c, `SELECT `+userColumns+` FROM users WHERE tenant_id = $2 AND id = $1`, id, Tenant(c).ID))
	if err != nil {
		httpapi.WriteError(c, dbError(err, "user"))
		return
	}
	c.JSON(http.StatusOK, u)
}

func updateUser(c *gin.Context) {
	var in userInput
	if err := httpapi.BindJSON(c, &in); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if err := in.validate(false); err != nil {
		httpapi.WriteError(c, err)
		return
	}
	id, db, ok := userAndDB(c)
	if !ok {
		return
	}
	u, err := scanUser(db.QueryRow(c, `
		UPDATE users SET email = coalesce($2, email), name = coalesce($3, name), updated_at = now()
		WHERE tenant_id = $4 AND id = $1 RETURNING `+userColumns, id, in.Email, in.Name, Tenant(c).ID))
	if err != nil {
		httpapi.WriteError(c, dbError(err, "user"))
		return
	}
	c.JSON(http.StatusOK, u)
}

func deleteUser(c *gin.Context) {
	id, db, ok := userAndDB(c)
	if !ok {
		return
	}
	tag, err := db.Exec(c, `DELETE FROM users WHERE tenant_id = $2 AND id = $1`, id, Tenant(c).ID)
	if err != nil {
		httpapi.WriteError(c, dbError(err, "user"))
		return
	}
	if tag.RowsAffected() == 0 {
		httpapi.Fail(c, catalog.CodeNotFound, "user %q not found", id)
		return
	}
	c.Status(http.StatusNoContent)
}

// listUsers pages through users oldest first, as every list does: ?limit=
// (1 to 1000, default 100) and ?cursor= from the previous page's next_cursor.
func listUsers(c *gin.Context) {
	limit, cur, err := httpapi.PageQuery(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	if limit == 0 {
		limit = catalog.DefaultPageLimit
	}
	after, afterID := time.Time{}, "00000000-0000-0000-0000-000000000000"
	if cur != "" {
		raw, err := base64.RawURLEncoding.DecodeString(cur)
		ts, id, ok := strings.Cut(string(raw), "|")
		t, terr := time.Parse(time.RFC3339Nano, ts)
		if err != nil || !ok || terr != nil || !uuidRE.MatchString(id) {
			httpapi.WriteError(c, catalog.ErrBadCursor())
			return
		}
		after, afterID = t, id
	}
	db, err := DB(c)
	if err != nil {
		httpapi.WriteError(c, err)
		return
	}
	rows, err := db.Query(c, listUsersSQL, after, afterID, limit+1, Tenant(c).ID)
	if err != nil {
		httpapi.WriteError(c, dbError(err, "users"))
		return
	}
	users, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (User, error) { return scanUser(row) })
	if err != nil {
		httpapi.WriteError(c, dbError(err, "users"))
		return
	}
	page := gin.H{"users": users}
	if len(users) > limit {
		last := users[limit-1]
		page["users"] = users[:limit]
		page["next_cursor"] = base64.RawURLEncoding.EncodeToString([]byte(last.CreatedAt.UTC().Format(time.RFC3339Nano) + "|" + last.ID))
	}
	if len(users) == 0 {
		page["users"] = []User{}
	}
	c.JSON(http.StatusOK, page)
}

// fencePolicyPrefix starts the name of the restrictive policy with which
// the mover fences one tenant's rows in a pool database (mover.FenceTenantRows);
// PostgreSQL names a restrictive policy in the error a write it refuses gets.
const fencePolicyPrefix = "tenantplane_fence_"

// dbError categorises an error from a tenant database.
func dbError(err error, what string) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return catalog.Errorf(catalog.CodeNotFound, "%s not found", what)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "23505":
			return catalog.WrapError(catalog.CodeConflict, err, "a %s with this %s already exists", what, uniqueField(pgErr))
		case pgErr.Code == "23514" || strings.HasPrefix(pgErr.Code, "22"): // check violation, data exception
			return catalog.WrapError(catalog.CodeInvalid, err, "invalid %s: %s", what, pgErr.Message)
		case pgErr.Code == "42501" && strings.Contains(pgErr.Message, fencePolicyPrefix):
			// A write that began before a promotion's hold and ran into its
			// fence (the mover's restrictive policy on a pool database): the
			// tenant is moving, and the write lands once it has.
			return catalog.WrapError(catalog.CodeUnavailable, err, "the tenant is being moved: try again in a moment")
		case pgErr.Code == "57P01":
			// The session was ended for it (admin_shutdown): a move's fence
			// cut a statement still running past the hold's wait, or the
			// server is shutting down. The statement did not complete.
			return catalog.WrapError(catalog.CodeUnavailable, err, "the tenant database ended the session (a move's fence, or a restart): retry in a moment")
		case pgErr.Code == "57014" || pgErr.Code == "55P03" || strings.HasPrefix(pgErr.Code, "08") || strings.HasPrefix(pgErr.Code, "53") || strings.HasPrefix(pgErr.Code, "57P"):
			return catalog.WrapError(catalog.CodeUnavailable, err, "the tenant database did not answer in time")
		}
		return err
	}
	return catalog.WrapError(catalog.CodeUnavailable, err, "the tenant database is unavailable")
}

func uniqueField(e *pgconn.PgError) string {
	if strings.Contains(e.ConstraintName, "email") {
		return "email"
	}
	return "value"
}
