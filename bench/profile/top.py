"""Top functions of a py-spy raw (collapsed stacks) profile, by self and inclusive samples.

    py-spy record -p PID -d 10 -r 200 -f raw -o out.raw --nonblocking [--gil]
    python bench/profile/top.py out.raw [N]
"""

import collections
import sys


def main() -> None:
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    with open(sys.argv[1]) as fh:
        for line in fh:
            line = line.rstrip()
            if not line:
                continue
            stack, count = line.rsplit(" ", 1)
            n = int(count)
            total += n
            frames = stack.split(";")
            own[frames[-1]] += n
            for frame in set(frames):
                inclusive[frame] += n
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    print(f"{total} samples\n--- self")
    for frame, n in own.most_common(top):
        print(f"{100 * n / total:5.1f}% {frame}")
    print("--- inclusive")
    for frame, n in inclusive.most_common(top):
        print(f"{100 * n / total:5.1f}% {frame}")


if __name__ == "__main__":
    main()
