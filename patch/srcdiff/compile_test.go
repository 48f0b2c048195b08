package srcdiff

import (
	"os"
	"path/filepath"
	"testing"
)

// kbuild records an object's command as cmd_<obj> (6.1) or, since 6.5,
// savedcmd_<obj>: both are read, and the commands split at ';'.
func TestReadUnit(t *testing.T) {
	for _, prefix := range []string{"cmd_", "savedcmd_"} {
		root := t.TempDir()
		os.MkdirAll(filepath.Join(root, "fs/nfsd"), 0o755)
		record := prefix + `fs/nfsd/nfs4proc.o := gcc-12 -DMODULE -DKBUILD_MODNAME='"nfsd"' -c -o fs/nfsd/nfs4proc.o fs/nfsd/nfs4proc.c ; ./tools/objtool/objtool --orc fs/nfsd/nfs4proc.o` + "\n"
		if err := os.WriteFile(filepath.Join(root, "fs/nfsd/.nfs4proc.o.cmd"), []byte("deps := x\n"+record), 0o644); err != nil {
			t.Fatal(err)
		}
		u, err := readUnit(root, "fs/nfsd/nfs4proc.c")
		if err != nil {
			t.Fatalf("%s: %v", prefix, err)
		}
		if len(u.cmds) != 2 || u.cmds[0][0] != "gcc-12" || u.cmds[1][0] != "./tools/objtool/objtool" || u.Module != "nfsd" {
			t.Errorf("%s: commands %q, module %q", prefix, u.cmds, u.Module)
		}
	}
	if _, err := readUnit(t.TempDir(), "fs/nfsd/nfs4proc.c"); err == nil {
		t.Error("no .cmd file: no error")
	}
}
