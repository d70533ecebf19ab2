package realkafka

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
)

var versionRE = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+$`)

// CacheDir is where resolved classpaths are kept: PULSEBOARD_CACHE_DIR, else the user's
// cache directory, under pulseboard/kafka.
func CacheDir() (string, error) {
	base := os.Getenv("PULSEBOARD_CACHE_DIR")
	if base == "" {
		d, err := os.UserCacheDir()
		if err != nil {
			return "", err
		}
		base = filepath.Join(d, "pulseboard")
	}
	return filepath.Join(base, "kafka"), nil
}

// Classpath returns the broker's classpath for a Kafka version: from the cache when every
// jar it names is still in Maven's local repository, else resolved with mvn (one process
// at a time per machine, under a file lock) and cached.
func Classpath(ctx context.Context, version string) (string, error) {
	if !versionRE.MatchString(version) {
		return "", fmt.Errorf("realkafka: %q is not a Kafka version like %s", version, Latest)
	}
	dir, err := CacheDir()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	cached := filepath.Join(dir, version+".classpath")
	if cp, ok := readClasspath(cached); ok {
		return cp, nil
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck
	if cp, ok := readClasspath(cached); ok {             // resolved by another process meanwhile
		return cp, nil
	}
	mvn, err := exec.LookPath("mvn")
	if err != nil {
		return "", ErrNoMaven
	}
	pomFile := filepath.Join(dir, "pom.xml")
	if err := os.WriteFile(pomFile, pom, 0o644); err != nil {
		return "", err
	}
	tmp := cached + ".tmp"
	cmd := exec.CommandContext(ctx, mvn, "-q", "-B", "-f", pomFile, "-Dkafka.version="+version,
		"dependency:build-classpath", "-Dmdep.outputFile="+tmp)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("realkafka: resolving Kafka %s with Maven: %v\n%s", version, err, out)
	}
	if _, ok := readClasspath(tmp); !ok {
		return "", fmt.Errorf("realkafka: Maven's classpath for Kafka %s names missing jars", version)
	}
	if err := os.Rename(tmp, cached); err != nil {
		return "", err
	}
	cp, _ := readClasspath(cached)
	return cp, nil
}

func readClasspath(file string) (string, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", false
	}
	cp := strings.TrimSpace(string(b))
	if cp == "" {
		return "", false
	}
	for _, jar := range filepath.SplitList(cp) {
		if _, err := os.Stat(jar); err != nil {
			return "", false
		}
	}
	return cp, true
}
