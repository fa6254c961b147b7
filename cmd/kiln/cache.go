package main

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/cache"
	"github.com/kiln-build/kiln/config"
)

func newCacheCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cache",
		Short: "List and prune this host's shared caches ([caches] in worker.toml)",
		Long: `Jobs name the host's caches (caches = ["apt"]); each run sees its owner's tree
<dir>/owners/<owner>/<arch> (a cache with shared = true: <dir>/<arch>) at the
cache's target through a layer of its own, and what a run that succeeded
added is merged in by name. See docs/caches.md.`,
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "Show each cache: name, dir, target, max_size, and per owner and arch its bytes and files",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadHostConfig(g)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tDIR\tTARGET\tMAX_SIZE\tOWNER\tARCH\tBYTES\tFILES")
			for _, d := range sortedCaches(cacheDefs(cfg)) {
				us, err := cache.Usages(d.Dir)
				if err != nil {
					return fmt.Errorf("cache %s: %w", d.Name, err)
				}
				maxSize := "-"
				if d.MaxSize > 0 {
					maxSize = strconv.FormatInt(d.MaxSize, 10)
				}
				if len(us) == 0 {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t-\t-\t0\t0\n", d.Name, d.Dir, d.Target, maxSize)
				}
				for _, u := range us {
					// "shared": the tree of every owner (a shared
					// cache's, or one from before caches had owners).
					owner := cmp.Or(u.Owner, "shared")
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", d.Name, d.Dir, d.Target, maxSize, owner, u.Arch, u.Bytes, u.Files)
				}
			}
			return w.Flush()
		},
	}
	addHostConfigFlag(list, g)
	var all bool
	prune := &cobra.Command{
		Use:   "prune [NAME...] [--all]",
		Short: "Evict least recently used files down to each cache's max_size, or everything with --all",
		Long: `Evict the least recently used files (by the later of access and modification
time) of the named caches, or of every cache, until each holds at most its
max_size; a cache without max_size keeps everything unless --all is given.
With --all every file goes. A run using the cache meanwhile keeps the files it
has open; the next run fetches what it misses again.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadHostConfig(g)
			if err != nil {
				return err
			}
			defs := cacheDefs(cfg)
			for _, n := range args {
				if _, ok := defs[n]; !ok {
					return fmt.Errorf("no cache %q in %s", n, cfg.Path())
				}
			}
			var errs []error
			for _, d := range sortedCaches(defs) {
				if len(args) > 0 && !slices.Contains(args, d.Name) {
					continue
				}
				limit := d.MaxSize
				if all {
					limit = 0
				} else if limit <= 0 {
					continue
				}
				gone, err := cache.Evict(d.Dir, limit)
				var n int64
				for _, f := range gone {
					n += f.Size
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: evicted %d files, %d bytes\n", d.Name, len(gone), n)
				if err != nil {
					errs = append(errs, fmt.Errorf("cache %s: %w", d.Name, err))
				}
			}
			return errors.Join(errs...)
		},
	}
	addHostConfigFlag(prune, g)
	prune.Flags().BoolVar(&all, "all", false, "evict every file, whatever max_size says")
	cmd.AddCommand(list, prune)
	return cmd
}

func sortedCaches(defs map[string]cache.Def) []cache.Def {
	out := make([]cache.Def, 0, len(defs))
	for _, d := range defs {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b cache.Def) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// cacheDefs are the host's caches as the runner uses them, by name. It
// lives here, not in config, so that config (which the server reads)
// does not link the cache package.
func cacheDefs(h *config.Host) map[string]cache.Def {
	out := make(map[string]cache.Def, len(h.Caches))
	for name, c := range h.Caches {
		out[name] = cache.Def{Name: name, Dir: c.Dir, Target: c.Target, MaxSize: int64(c.MaxSize), Shared: c.Shared}
	}
	return out
}
