package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Check connects and verifies, sending no data and changing nothing, that the role can
// do what a run will do: create temporary tables in the database; with the table
// present, insert into and update it (and read it: ON CONFLICT reads the key columns),
// and find its own columns with types it can fill; with the table absent, create it in
// its schema.
func (d *Destination) Check(ctx context.Context) error {
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connecting to postgres %s: %w", d.location, err)
	}
	defer conn.Release()
	var (
		user                             string
		temp, schemaExists, schemaCreate bool
		tableExists                      bool
	)
	schema := pgx.Identifier{d.table.Schema}.Sanitize()
	err = conn.QueryRow(ctx, `SELECT current_user::text,
			has_database_privilege(current_database(), 'TEMPORARY'),
			to_regnamespace($1) IS NOT NULL,
			to_regnamespace($1) IS NOT NULL AND has_schema_privilege(to_regnamespace($1), 'CREATE'),
			to_regclass($2) IS NOT NULL`, schema, d.ident).
		Scan(&user, &temp, &schemaExists, &schemaCreate, &tableExists)
	if err != nil {
		return fmt.Errorf("postgres %s: checking privileges: %w", d.location, err)
	}
	var problems []string
	if !temp {
		problems = append(problems, fmt.Sprintf("role %s may not create temporary tables in the database (GRANT TEMPORARY ON DATABASE …)", user))
	}
	if !tableExists {
		switch {
		case !schemaExists:
			problems = append(problems, fmt.Sprintf("schema %s does not exist (backflow creates the table, not its schema)", d.table.Schema))
		case !schemaCreate:
			problems = append(problems, fmt.Sprintf("table %s does not exist and role %s may not create it (GRANT CREATE ON SCHEMA %s)", d.table, user, schema))
		}
		return joinProblems(d, problems)
	}
	var ins, upd, sel bool
	err = conn.QueryRow(ctx, `SELECT has_table_privilege(to_regclass($1), 'INSERT'), has_table_privilege(to_regclass($1), 'UPDATE'),
			has_table_privilege(to_regclass($1), 'SELECT')`, d.ident).Scan(&ins, &upd, &sel)
	if err != nil {
		return fmt.Errorf("postgres %s: checking privileges on %s: %w", d.location, d.table, err)
	}
	var missing []string
	for _, p := range []struct {
		ok   bool
		name string
	}{{ins, "INSERT"}, {upd, "UPDATE"}, {sel, "SELECT"}} {
		if !p.ok {
			missing = append(missing, p.name)
		}
	}
	if len(missing) > 0 {
		problems = append(problems, fmt.Sprintf("role %s lacks %s on table %s", user, strings.Join(missing, ", "), d.table))
	}
	cols, err := loadColumns(ctx, conn, d.ident)
	if err != nil {
		return fmt.Errorf("postgres %s: reading the columns of %s: %w", d.location, d.table, err)
	}
	// The columns every table must have; the others are added by the first run.
	for _, name := range []string{colKey, colType, colMessageID, colTimestamp, colUpdatedAt} {
		if _, ok := cols[name]; !ok {
			problems = append(problems, fmt.Sprintf("table %s has no column %s", d.table, name))
		}
	}
	if d.layout == LayoutJSONB {
		for _, name := range []string{colTraits, colProperties} {
			if c, ok := cols[name]; ok && !c.accepts(kindJSON) {
				problems = append(problems, fmt.Sprintf("column %s of %s is %s: layout jsonb needs jsonb", name, d.table, c.typ))
			}
		}
	}
	if err := d.checkFixed(cols); err != nil {
		problems = append(problems, err.Error())
	}
	return joinProblems(d, problems)
}

func joinProblems(d *Destination, problems []string) error {
	if len(problems) == 0 {
		return nil
	}
	return errors.New("postgres " + d.location + ": " + strings.Join(problems, "; "))
}
