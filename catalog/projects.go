package catalog

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"time"
)

// DefaultProject is created at first start so that a new user can begin.
const DefaultProject = "default"

// CreateProject adds a project with a unique name.
func (tx *Txn) CreateProject(name string, now time.Time) (Project, error) {
	if err := ValidateName("project", name); err != nil {
		return Project{}, err
	}
	if _, err := tx.ProjectByName(name); err == nil {
		return Project{}, conflictf("project %q exists", name)
	}
	p := Project{ID: NewID(KindProject), Name: name, Created: now.UTC()}
	return p, put(tx, KindProject, p.ID, p)
}

// Project returns a project by id.
func (tx *Txn) Project(id string) (Project, error) { return get[Project](tx, KindProject, id) }

// ProjectByName returns a project by name or id.
func (tx *Txn) ProjectByName(ref string) (Project, error) {
	if strings.HasPrefix(ref, idPrefix[KindProject]) {
		if p, err := tx.Project(ref); err == nil {
			return p, nil
		}
	}
	ps, _, err := pageOf[Project](tx, KindProject, ixPrefix(ixProjectName, ref), false, Page{Limit: 1}, nil)
	if err != nil {
		return Project{}, err
	}
	if len(ps) == 0 {
		return Project{}, notFoundf("project %q", ref)
	}
	return ps[0], nil
}

// Projects lists all projects by name.
func (tx *Txn) Projects() ([]Project, error) {
	ps, _, err := tx.ProjectPage(Page{})
	return ps, err
}

// ProjectPage lists projects by name, a page at a time.
func (tx *Txn) ProjectPage(pg Page) ([]Project, string, error) {
	return pageOf[Project](tx, KindProject, ixPrefix(ixProjectName), false, pg, nil)
}

// PutProject writes a project.
func (tx *Txn) PutProject(p Project) error { return put(tx, KindProject, p.ID, p) }

// DeleteProject removes an empty project.
func (tx *Txn) DeleteProject(p Project) error {
	if p.Name == DefaultProject {
		return conflictf("the default project cannot be removed")
	}
	servers, err := tx.countEntries(ixPrefix(ixServerName, p.ID))
	if err != nil {
		return err
	}
	backups, err := tx.countEntries(ixPrefix(ixBackupTime, p.ID))
	if err != nil {
		return err
	}
	policies, err := tx.countEntries(ixPrefix(ixPolicyName, p.ID))
	if err != nil {
		return err
	}
	if n := servers + backups + policies; n > 0 {
		return conflictf("project %s still has %d servers, %d policies and %d backups; remove them first", p.Name, servers, policies, backups)
	}
	remotes, err := tx.countEntries(ixPrefix(ixRemoteName, p.ID))
	if err != nil {
		return err
	}
	if remotes > 0 {
		return conflictf("project %s still has %d remotes; remove them first (csbs remote rm)", p.Name, remotes)
	}
	tokens, err := tx.Tokens(p.ID)
	if err != nil {
		return err
	}
	for _, t := range tokens {
		if err := del(tx, KindToken, t.ID); err != nil {
			return err
		}
	}
	return del(tx, KindProject, p.ID)
}

// countEntries counts the index entries under prefix (keys only).
func (tx *Txn) countEntries(prefix []byte) (int, error) {
	n := 0
	err := tx.scan(prefix, false, false, "", func(string, string, []byte) (bool, error) { n++; return true, nil })
	return n, err
}

// HashSecret returns the stored form of a token secret.
func HashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// NewSecret returns a fresh token secret.
func NewSecret() string {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return "csbs_" + hex.EncodeToString(b[:])
}

// CreateToken stores a token for a project ("" = admin) and returns it
// with its secret, which is not stored and cannot be shown again.
func (tx *Txn) CreateToken(project, name string, now time.Time) (Token, string, error) {
	if name == "" {
		name = "token"
	}
	if err := ValidateName("token", name); err != nil {
		return Token{}, "", err
	}
	secret := NewSecret()
	t := Token{ID: NewID(KindToken), Name: name, Project: project, Hash: HashSecret(secret), Created: now.UTC()}
	return t, secret, put(tx, KindToken, t.ID, t)
}

// TokenBySecret finds the live token with this secret: one index entry
// and one record, however many tokens exist.
func (tx *Txn) TokenBySecret(secret string) (Token, error) {
	ts, _, err := pageOf(tx, KindToken, ixPrefix(ixTokenHash, HashSecret(secret)), false, Page{Limit: 1}, func(t Token) bool { return !t.Revoked })
	if err != nil {
		return Token{}, err
	}
	if len(ts) == 0 {
		return Token{}, notFoundf("token")
	}
	return ts[0], nil
}

// Tokens lists a project's tokens ("" lists admin tokens) by id.
func (tx *Txn) Tokens(project string) ([]Token, error) {
	ts, _, err := tx.TokenPage(project, Page{})
	return ts, err
}

// TokenPage lists a project's tokens by id, a page at a time.
func (tx *Txn) TokenPage(project string, pg Page) ([]Token, string, error) {
	return pageOf[Token](tx, KindToken, ixPrefix(ixTokenProject, project), false, pg, nil)
}

// Token returns a token by id.
func (tx *Txn) Token(id string) (Token, error) { return get[Token](tx, KindToken, id) }

// PutToken writes a token.
func (tx *Txn) PutToken(t Token) error { return put(tx, KindToken, t.ID, t) }
