#!/usr/bin/python3
"""Fail if the modules under src/ import each other in a circle.

A file's imports are the crate paths it names (`crate::a::b`, `super::x`,
`use x::y` of a sibling declared in the same mod.rs), resolved to the
file that defines each module. Tests (`#[cfg(test)] mod tests`) are
left out: they may reach across. Prints each file's imports with -v.

    ci/check-imports.py [-v] [SRC]
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'src')


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ('mod', 'main'):
        rel = rel[:-1]
    return tuple(rel)


def file_of(mod, files):
    return files.get(mod)


def main():
    global SRC
    verbose = '-v' in sys.argv
    rest = [a for a in sys.argv[1:] if a != '-v']
    if rest:
        SRC = rest[0]
    files = {}
    for root, _, names in os.walk(SRC):
        for n in names:
            if n.endswith('.rs'):
                p = os.path.join(root, n)
                files[module_of(p)] = p
    graph = {}
    for mod, path in files.items():
        text = open(path).read()
        text = text.split('#[cfg(test)]\nmod tests')[0]
        text = re.sub(r'//[^\n]*', '', text)
        deps = set()
        base = mod if path.endswith(('mod.rs', 'main.rs')) else mod[:-1]
        for m in re.finditer(r'\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)', text):
            parts = m.group(2).split('::')[1:]
            start = () if m.group(1) == 'crate' else (mod[:-1] if not path.endswith('mod.rs') else mod[:-1])
            if m.group(1) == 'super':
                start = base[:-1] if path.endswith('mod.rs') else base[:-1] if False else mod[:-1]
            target = None
            for i in range(len(parts), 0, -1):
                cand = tuple(start) + tuple(parts[:i])
                if cand in files:
                    target = cand
                    break
            if target and target != mod:
                deps.add(target)
        # `use name::...` of a child module declared here (mod.rs, main.rs)
        if path.endswith(('mod.rs', 'main.rs')):
            for m in re.finditer(r'^\s*use\s+([a-z_][a-z0-9_]*)::', text, re.M):
                cand = mod + (m.group(1),)
                if cand in files:
                    deps.add(cand)
        graph[mod] = deps
    # A parent's `pub mod child;` is a declaration, not an import.
    name = lambda m: '/'.join(m) or 'main'
    if verbose:
        for m in sorted(graph):
            print(name(m), '->', ', '.join(sorted(name(d) for d in graph[m])))
    # Find cycles with a DFS.
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    if cycles:
        for c in cycles:
            print('import circle:', ' -> '.join(name(m) for m in c), file=sys.stderr)
        print('check-imports: %d circle(s); move what both sides need into a module '
              'of its own (see docs/design.md)' % len(cycles), file=sys.stderr)
        sys.exit(1)
    print('check-imports: %d modules, no import circle' % len(graph))


if __name__ == '__main__':
    main()
